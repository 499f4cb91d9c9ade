"""Turning the common "images here, labels there" layout into a standard dataset folder.

Users rarely have nnU-Net's layout; they have `Image/Case1.bmp` and `Label/Case1_label.bmp`.
`import_paired_folders` writes the standard layout (see `ldseg.data.dataset`) so that everything
downstream reads one format. It validates while converting and builds the result in a temporary
sibling folder that is renamed into place only at the end, so a failed import leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ldseg.data.dataset import (
    DatasetSpec,
    geometry_difference,
    load_dataset_spec,
    write_dataset_json,
)
from ldseg.data.imageio import (
    SUPPORTED_FORMATS,
    Geometry,
    file_ending,
    read_image,
    spatial_dims_of_ending,
    write_image,
)
from ldseg.errors import LdsegError
from ldseg.files import atomic_write

_LIST_LIMIT = 8


@dataclass
class _Pair:
    case: str
    image: Path
    label: Path


def import_paired_folders(
    images_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    *,
    label_suffix: str = "_label",
    class_names: list[str] | None = None,
    instances_to_foreground: bool = False,
    channel_names: list[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    test_cases: list[str] | None = None,
) -> DatasetSpec:
    """Import `images_dir/{case}{ext}` + `labels_dir/{case}{label_suffix}{ext}` into `out_dir`.

    2D images become PNG (RGB stays one 3-channel file, 16-bit grey stays 16-bit); 3D images
    keep their format (.nii becomes .nii.gz) and geometry; labels are written as unsigned
    integers on the image's grid. `instances_to_foreground` maps every label > 0 to 1 (instance
    maps such as GlaS become foreground vs background). `test_cases` go to imagesTs/labelsTs
    (held out: never trained or validated on). Returns the new dataset's spec.
    """
    images_dir, labels_dir, out_dir = Path(images_dir), Path(labels_dir), Path(out_dir)
    _check_out_dir(out_dir, overwrite, (images_dir, labels_dir))
    pairs, in_ending = _pair_files(images_dir, labels_dir, label_suffix)
    held_out = set(test_cases or ())
    unknown = sorted(held_out - {p.case for p in pairs})
    if unknown:
        raise LdsegError(f"{images_dir}: test cases not found: {', '.join(unknown)}")
    if held_out and len(held_out) == len(pairs):
        raise LdsegError(f"{images_dir}: every case is a test case; none is left for training")
    dims = spatial_dims_of_ending(in_ending)
    out_ending = ".png" if dims == 2 else (".nii.gz" if in_ending == ".nii" else in_ending)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".importing",
                                dir=out_dir.parent))
    try:
        for folder in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if held_out else ()):
            (tmp / folder).mkdir()
        num_channels: int | None = None
        first_image: Path | None = None
        values: set[int] = set()
        for pair in pairs:
            split = "Ts" if pair.case in held_out else "Tr"
            channels = _import_case(pair, tmp, in_ending, out_ending, instances_to_foreground,
                                    values, split)
            if num_channels is None:
                num_channels, first_image = channels, pair.image
            elif channels != num_channels:
                raise LdsegError(f"{pair.image}: has {channels} channel(s) but {first_image} "
                                 f"has {num_channels}; all images need the same channels")
        assert num_channels is not None
        classes = _resolve_class_names(class_names, values, labels_dir, instances_to_foreground)
        channels_named = _resolve_channel_names(channel_names, num_channels, dims, images_dir)
        write_dataset_json(tmp, channels_named, classes, len(pairs) - len(held_out), out_ending,
                           name or out_dir.resolve().name)
        _make_shareable(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset_spec(out_dir)


# ----------------------------------------------------------------------------- finding pairs


def _check_out_dir(out_dir: Path, overwrite: bool, sources: tuple[Path, ...]) -> None:
    resolved = out_dir.resolve()
    for source in sources:
        src = source.resolve()
        if src == resolved or resolved in src.parents:
            raise LdsegError(f"{out_dir}: output folder must not contain the input folder "
                             f"{source}")
    if out_dir.exists() and not out_dir.is_dir():
        raise LdsegError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise LdsegError(f"{out_dir}: already exists and is not empty "
                         "(choose another folder or allow overwriting)")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _pair_files(
    images_dir: Path, labels_dir: Path, label_suffix: str
) -> tuple[list[_Pair], str]:
    """Match each image with its label by name; return the pairs and the images' format."""
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise LdsegError(f"{folder}: folder not found")
    same_folder = images_dir.resolve() == labels_dir.resolve()
    if same_folder and not label_suffix:
        raise LdsegError(f"{images_dir}: images and labels share a folder, so labels need a "
                         "name suffix (e.g. '_label')")

    label_paths: dict[str, list[Path]] = {}
    unmatched_labels: list[Path] = []
    for path in _image_files(labels_dir):
        ending = file_ending(path)
        stem = path.name[: -len(ending)] if ending in SUPPORTED_FORMATS else None
        if stem is not None and stem.endswith(label_suffix):
            label_paths.setdefault(stem[: len(stem) - len(label_suffix)], []).append(path)
        elif not same_folder:
            unmatched_labels.append(path)

    images = [p for p in _image_files(images_dir)
              if not (same_folder and _is_label(p, label_suffix))]
    if not images:
        raise LdsegError(f"{images_dir}: no images found (the folder is empty)")
    by_ending: dict[str, Path] = {}
    for path in images:
        by_ending.setdefault(file_ending(path), path)
    unsupported = [e for e in by_ending if e not in SUPPORTED_FORMATS]
    if unsupported:
        raise LdsegError(f"{by_ending[unsupported[0]]}: unsupported format '{unsupported[0]}' "
                         f"(supported: {', '.join(SUPPORTED_FORMATS)})")
    if len(by_ending) > 1:
        examples = ", ".join(p.name for p in by_ending.values())
        raise LdsegError(f"{images_dir}: mixed image formats ({examples}); "
                         "convert them to one format")
    in_ending = next(iter(by_ending))

    pairs, missing = [], []
    for image in images:
        case = image.name[: -len(in_ending)]
        candidates = label_paths.get(case, [])
        if len(candidates) > 1:
            raise LdsegError(f"{candidates[0]}: several labels for {image.name} "
                             f"({', '.join(p.name for p in candidates)})")
        if not candidates:
            missing.append(image.name)
            continue
        label = candidates[0]
        if spatial_dims_of_ending(file_ending(label)) != spatial_dims_of_ending(in_ending):
            raise LdsegError(f"{label}: label format '{file_ending(label)}' does not match the "
                             f"image format '{in_ending}' of {image.name}")
        pairs.append(_Pair(case, image, label))
    if missing:
        hint = ""
        if unmatched_labels:
            hint = f"; label files there that match no image: {_listing(unmatched_labels)}"
        raise LdsegError(f"{images_dir}: no label for {len(missing)} image(s): "
                         f"{_listing(missing)} (looked for {{case}}{label_suffix}{{ext}} in "
                         f"{labels_dir}{hint})")
    return pairs, in_ending


def _is_label(path: Path, label_suffix: str) -> bool:
    ending = file_ending(path)
    return path.name[: -len(ending)].endswith(label_suffix)


def _listing(items: list[Path] | list[str]) -> str:
    names = [p.name if isinstance(p, Path) else p for p in items]
    more = f", ... ({len(names)} in all)" if len(names) > _LIST_LIMIT else ""
    return ", ".join(names[:_LIST_LIMIT]) + more


# ----------------------------------------------------------------------------- converting


def _import_case(
    pair: _Pair, out: Path, in_ending: str, out_ending: str, instances_to_foreground: bool,
    values: set[int], split: str = "Tr",
) -> int:
    """Write one case's image and label; add its label values to `values`; return channels."""
    image, geometry = read_image(pair.image)
    label, label_geometry = _read_label(pair.label, instances_to_foreground)
    if label.shape != image.shape[1:]:
        raise LdsegError(f"{pair.label}: label shape {label.shape} differs from the image "
                         f"shape {image.shape[1:]} of {pair.image.name}")
    image_path = out / f"images{split}" / f"{pair.case}_0000{out_ending}"
    label_path = out / f"labels{split}" / f"{pair.case}{out_ending}"
    if label.ndim == 2:
        _write_png(image_path, _png_ready(pair.image, image))
        write_image(label_path, _label_dtype(label))
    else:
        diff = geometry_difference(label_geometry, geometry)
        if diff:
            raise LdsegError(f"{pair.label}: label geometry differs from the image "
                             f"{pair.image.name}: {diff}")
        if image.shape[0] == 1 and in_ending == out_ending:
            shutil.copyfile(pair.image, image_path)  # bit-identical, header included
        else:  # .nii -> .nii.gz, or a vector image split into one file per channel
            for channel in range(image.shape[0]):
                path = out / f"images{split}" / f"{pair.case}_{channel:04d}{out_ending}"
                write_image(path, image[channel], geometry)
        write_image(label_path, _label_dtype(label), geometry)
    values.update(int(v) for v in np.unique(label))
    return image.shape[0]


def _read_label(path: Path, instances_to_foreground: bool) -> tuple[np.ndarray, Geometry]:
    """A label map as non-negative integers (spatial only); grey stored as RGB is accepted."""
    array, geometry = read_image(path)
    if array.shape[0] > 1:
        if not all(np.array_equal(array[0], array[c]) for c in range(1, array.shape[0])):
            raise LdsegError(f"{path}: label has {array.shape[0]} different channels; "
                             "colour-coded labels are not supported, use one integer per class")
    label = array[0]
    if label.dtype == np.bool_:
        label = label.astype(np.uint8)
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise LdsegError(f"{path}: label has non-integer values")
    if label.size and label.min() < 0:
        raise LdsegError(f"{path}: label has negative values (min {label.min()})")
    if instances_to_foreground:
        return (label > 0).astype(np.uint8), geometry
    return label, geometry


def _label_dtype(label: np.ndarray) -> np.ndarray:
    return label.astype(np.uint8 if label.max(initial=0) <= 255 else np.uint16)


def _png_ready(path: Path, image: np.ndarray) -> np.ndarray:
    """A 2D image (C, H, W) as uint8/uint16 that PNG holds without loss, or an error."""
    channels = image.shape[0]
    if channels not in (1, 3):
        raise LdsegError(f"{path}: {channels}-channel 2D images are not supported "
                         "(use grey or RGB)")
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype in (np.uint8, np.uint16):
        if channels == 3 and image.dtype != np.uint8:
            raise LdsegError(f"{path}: 16-bit RGB images are not supported")
        return image
    if np.issubdtype(image.dtype, np.integer) and channels == 1:
        if image.min() >= 0 and image.max() <= 65535:
            return image.astype(np.uint16)
        raise LdsegError(f"{path}: grey values outside 0..65535 cannot be stored as PNG")
    raise LdsegError(f"{path}: {image.dtype} 2D images cannot be stored as PNG "
                     "(convert them to 8- or 16-bit)")


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write (1 or 3, H, W) uint8/uint16 as one PNG, atomically (temporary name, then rename)."""
    pil = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)), mode="RGB") \
        if image.shape[0] == 3 else Image.fromarray(np.ascontiguousarray(image[0]))
    with atomic_write(path, suffix=".png") as tmp:
        pil.save(tmp, format="PNG")


# ----------------------------------------------------------------------------- finishing


def _resolve_class_names(
    class_names: list[str] | None, values: set[int], labels_dir: Path,
    instances_to_foreground: bool,
) -> list[str]:
    """The given class names if they cover the label values, else names from the values."""
    top = max(values, default=0)
    if class_names is not None:
        if len(class_names) < 2:
            raise LdsegError(f"{labels_dir}: need at least two class names (background and "
                             f"one class), got {class_names}")
        if top >= len(class_names):
            raise LdsegError(f"{labels_dir}: labels hold values up to {top} but only "
                             f"{len(class_names)} class names were given "
                             f"({', '.join(class_names)})")
        if len(set(class_names)) != len(class_names):
            raise LdsegError(f"{labels_dir}: class names must be unique, got {class_names}")
        return list(class_names)
    if top == 0:
        raise LdsegError(f"{labels_dir}: labels hold only background (0); "
                         "nothing to segment")
    absent = sorted(set(range(top + 1)) - values)
    if absent:
        hint = "" if instances_to_foreground else \
            " (instance maps? import them with instances mapped to foreground)"
        raise LdsegError(f"{labels_dir}: label values {_value_list(sorted(values))} are not "
                         f"consecutive from 0 (missing {_value_list(absent)}); give class names "
                         f"that cover them{hint}")
    return ["background"] + [f"class{v}" for v in range(1, top + 1)]


def _value_list(values: list[int]) -> str:
    more = f", ... ({len(values)} in all)" if len(values) > _LIST_LIMIT else ""
    return ", ".join(str(v) for v in values[:_LIST_LIMIT]) + more


def _resolve_channel_names(
    channel_names: list[str] | None, num_channels: int, dims: int, images_dir: Path
) -> list[str]:
    if channel_names is not None:
        if len(channel_names) != num_channels:
            raise LdsegError(f"{images_dir}: {len(channel_names)} channel names given but the "
                             f"images have {num_channels} channel(s)")
        return list(channel_names)
    if dims == 2 and num_channels == 3:
        return ["R", "G", "B"]
    if num_channels == 1:
        return ["image"]
    return [f"image{c}" for c in range(num_channels)]


def _make_shareable(root: Path) -> None:
    """Give the built tree the usual umask permissions (temporary files and folders are private)."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the finished `tmp` folder (the old one is removed only after)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    old.rmdir()
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
