"""The nnU-Net v2 raw dataset format: reading its description, listing and checking its cases.

A dataset folder holds `dataset.json`, `imagesTr/{case}_{XXXX}{ending}` (one file per channel,
4-digit channel index; an RGB 2D file supplies 3 channels at once), `labelsTr/{case}{ending}` and
optionally `imagesTs/`. Keeping to this layout lets users bring datasets already prepared for
nnU-Net, and lets `check_dataset` tell them every problem before hours of training are spent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ldseg.data.imageio import (
    SUPPORTED_FORMATS,
    Geometry,
    file_ending,
    read_image,
    spatial_dims_of_ending,
)
from ldseg.errors import LdsegError
from ldseg.files import atomic_write

DATASET_JSON = "dataset.json"
SPLITS = ("Tr", "Ts")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


@dataclass
class DatasetSpec:
    """What `dataset.json` declares; the single source of truth for channels and classes."""

    root: Path
    name: str
    channel_names: list[str]
    class_names: list[str]
    num_training: int
    file_ending: str

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def spatial_dims(self) -> int:
        return spatial_dims_of_ending(self.file_ending)

    def labels_dict(self) -> dict[str, int]:
        """The `labels` mapping of dataset.json (name -> label value)."""
        return {name: value for value, name in enumerate(self.class_names)}


@dataclass
class Case:
    """One case's files: channel files sorted by channel index, and its label if any."""

    name: str
    image_files: list[Path]
    label_file: Path | None


# ----------------------------------------------------------------------------- dataset.json


def load_dataset_spec(root: str | Path) -> DatasetSpec:
    """Read and validate `root/dataset.json`; every problem is an `LdsegError` naming the file."""
    root = Path(root)
    if not root.is_dir():
        raise LdsegError(f"{root}: dataset folder not found")
    path = root / DATASET_JSON
    if not path.is_file():
        raise LdsegError(f"{path}: not found (a dataset folder needs a {DATASET_JSON})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LdsegError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LdsegError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise LdsegError(f"{path}: expected a JSON object at the top level")

    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in data:
            raise LdsegError(f"{path}: missing key '{key}'")
    channel_names = _parse_channel_names(path, data["channel_names"])
    class_names = _parse_labels(path, data["labels"])

    num_training = data["numTraining"]
    if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 0:
        raise LdsegError(f"{path}: 'numTraining' must be a non-negative integer, "
                         f"not {num_training!r}")
    ending = data["file_ending"]
    if not isinstance(ending, str) or ending not in SUPPORTED_FORMATS:
        raise LdsegError(f"{path}: unsupported 'file_ending' {ending!r} "
                         f"(supported: {', '.join(SUPPORTED_FORMATS)})")
    name = data.get("name", root.resolve().name)
    if not isinstance(name, str):
        raise LdsegError(f"{path}: 'name' must be a string, not {name!r}")
    return DatasetSpec(root, name, channel_names, class_names, num_training, ending)


def _parse_channel_names(path: Path, value: object) -> list[str]:
    if not isinstance(value, dict) or not value:
        raise LdsegError(f"{path}: 'channel_names' must be a non-empty object like "
                         '{"0": "MRI"}')
    by_index: dict[int, str] = {}
    for key, name in value.items():
        if not (isinstance(key, str) and key.isdigit()) or not isinstance(name, str):
            raise LdsegError(f"{path}: 'channel_names' entries must map a channel index "
                             f"to a name, not {key!r}: {name!r}")
        by_index[int(key)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise LdsegError(f"{path}: 'channel_names' indices must be 0..{len(by_index) - 1}, "
                         f"found {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _parse_labels(path: Path, value: object) -> list[str]:
    if not isinstance(value, dict):
        raise LdsegError(f"{path}: 'labels' must be an object like "
                         '{"background": 0, "tumour": 1}')
    by_value: dict[int, str] = {}
    for name, label in value.items():
        if isinstance(label, (list, tuple)):
            raise LdsegError(f"{path}: region-based label '{name}' is not supported; "
                             "give each class one integer value")
        if not isinstance(label, int) or isinstance(label, bool):
            raise LdsegError(f"{path}: label '{name}' must be an integer, not {label!r}")
        if label in by_value:
            raise LdsegError(f"{path}: labels '{by_value[label]}' and '{name}' share "
                             f"the value {label}")
        by_value[label] = name
    if len(by_value) < 2:
        raise LdsegError(f"{path}: 'labels' needs background (0) and at least one class, "
                         f"found {len(by_value)}")
    if sorted(by_value) != list(range(len(by_value))):
        raise LdsegError(f"{path}: label values must be consecutive from 0 (background), "
                         f"found {sorted(by_value)}")
    return [by_value[i] for i in range(len(by_value))]


def write_dataset_json(
    root: str | Path,
    channel_names: Sequence[str],
    class_names: Sequence[str],
    num_training: int,
    file_ending: str,
    name: str,
) -> Path:
    """Write `root/dataset.json` atomically, so a crash never leaves a truncated description."""
    root = Path(root)
    if not channel_names:
        raise LdsegError(f"{root}: a dataset needs at least one channel name")
    if len(class_names) < 2:
        raise LdsegError(f"{root}: a dataset needs background and at least one class, "
                         f"got {list(class_names)}")
    if len(set(class_names)) != len(class_names):
        raise LdsegError(f"{root}: class names must be unique, got {list(class_names)}")
    spatial_dims_of_ending(file_ending)
    data = {
        "name": name,
        "channel_names": {str(i): str(c) for i, c in enumerate(channel_names)},
        "labels": {str(c): i for i, c in enumerate(class_names)},
        "numTraining": int(num_training),
        "file_ending": file_ending,
    }
    path = Path(root) / DATASET_JSON
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- listing cases


def _visible_files(folder: Path) -> list[Path]:
    """Files of a folder, skipping hidden ones (also the temporary files of atomic writes)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _stem(path: Path, ending: str) -> str | None:
    """The name without `ending`, or None if the file does not have that ending."""
    if not path.name.lower().endswith(ending.lower()):
        return None
    return path.name[: -len(ending)]


def _scan_channel_files(
    folder: Path, ending: str
) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """Group `{case}_{XXXX}{ending}` files by case; return the groups and the other files."""
    groups: dict[str, dict[int, Path]] = {}
    others: list[Path] = []
    for path in _visible_files(folder):
        stem = _stem(path, ending)
        match = _CHANNEL_SUFFIX.match(stem) if stem is not None else None
        if match is None:
            others.append(path)
            continue
        groups.setdefault(match["case"], {})[int(match["index"])] = path
    return groups, others


def _split_folders(spec: DatasetSpec, split: str) -> tuple[Path, Path | None]:
    if split not in SPLITS:
        raise LdsegError(f"unknown split '{split}' (use 'Tr' or 'Ts')")
    return spec.root / f"images{split}", (spec.root / "labelsTr" if split == "Tr" else None)


def list_cases(spec: DatasetSpec, split: str = "Tr") -> list[Case]:
    """The cases of a split sorted by name ("Tr": with labels where present, "Ts": without).

    A missing `imagesTr` is an error; a missing `imagesTs` just means no test cases.
    """
    images_dir, labels_dir = _split_folders(spec, split)
    if not images_dir.is_dir():
        if split == "Ts":
            return []
        raise LdsegError(f"{images_dir}: folder not found")
    groups, _ = _scan_channel_files(images_dir, spec.file_ending)
    cases = []
    for name in sorted(groups):
        files = [groups[name][i] for i in sorted(groups[name])]
        label = labels_dir / f"{name}{spec.file_ending}" if labels_dir is not None else None
        cases.append(Case(name, files, label if label is not None and label.is_file() else None))
    return cases


def find_image_cases(
    folder: str | Path, file_ending: str, num_channels: int | None = None
) -> list[Case]:
    """Group the images of any folder into cases (for prediction), sorted by name.

    Files named `{case}_{XXXX}{ending}` are grouped by case. A folder of plain `{case}{ending}`
    files gives single-file cases; so does a folder whose `_XXXX` numbers are not channel indices
    (they do not start at 0 or run past `num_channels` files), e.g. `slice_0001.png, ...`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LdsegError(f"{folder}: folder not found")
    files = [p for p in _visible_files(folder) if _stem(p, file_ending) is not None]
    if not files:
        found = sorted({_ending_for_message(p) for p in _visible_files(folder)})
        hint = f" (found {', '.join(found)})" if found else " (the folder is empty)"
        raise LdsegError(f"{folder}: no '{file_ending}' images found{hint}")

    groups: dict[str, dict[int, Path]] = {}
    plain: dict[str, Path] = {}
    for path in files:
        stem = _stem(path, file_ending)
        assert stem is not None
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:
            plain[stem] = path
        else:
            groups.setdefault(match["case"], {})[int(match["index"])] = path
    channel_naming = all(
        sorted(g) == list(range(len(g))) and (num_channels is None or len(g) <= num_channels)
        for g in groups.values()
    )
    if not channel_naming:
        return [Case(_stem(p, file_ending) or p.name, [p], None) for p in files]
    clash = sorted(set(groups) & set(plain))
    if clash:
        name = clash[0]
        raise LdsegError(f"{folder}: '{name}{file_ending}' and '{name}_0000{file_ending}' both "
                         f"name case '{name}'; keep one naming scheme")
    cases = [Case(n, [groups[n][i] for i in sorted(groups[n])], None) for n in groups]
    cases += [Case(n, [p], None) for n, p in plain.items()]
    return sorted(cases, key=lambda c: c.name)


def _ending_for_message(path: Path) -> str:
    """A file's ending for messages: the supported format, else its last suffix or the name."""
    return file_ending(path) or path.name


# ----------------------------------------------------------------------------- loading


def load_case(
    case: Case, spec: DatasetSpec | None = None
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Read a case as (image (C, *spatial) float32, label (*spatial) int64 or None, geometry).

    With `spec`, the channel count and label values are checked against dataset.json too.
    """
    arrays = []
    geometry: Geometry | None = None
    for path in case.image_files:
        array, geo = read_image(path)
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise LdsegError(f"{path}: shape {array.shape[1:]} differs from "
                             f"{case.image_files[0].name}'s {arrays[0].shape[1:]}")
        geometry = geometry or geo
        arrays.append(array.astype(np.float32, copy=False))
    if not arrays or geometry is None:
        raise LdsegError(f"case '{case.name}': no image files")
    image = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    if spec is not None and image.shape[0] != spec.num_channels:
        raise LdsegError(f"{case.image_files[0]}: case '{case.name}' has {image.shape[0]} "
                         f"channels, dataset.json declares {spec.num_channels}")
    if case.label_file is None:
        return image, None, geometry

    raw, _ = read_image(case.label_file)
    if raw.shape[0] != 1:
        raise LdsegError(f"{case.label_file}: label has {raw.shape[0]} channels, expected 1")
    if raw.shape[1:] != image.shape[1:]:
        raise LdsegError(f"{case.label_file}: label shape {raw.shape[1:]} differs from the "
                         f"image shape {image.shape[1:]}")
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
        raise LdsegError(f"{case.label_file}: label has non-integer values")
    label = raw[0].astype(np.int64)
    if spec is not None and (label.min() < 0 or label.max() >= spec.num_classes):
        bad = _format_values(v for v in np.unique(label) if not 0 <= v < spec.num_classes)
        raise LdsegError(f"{case.label_file}: label values {bad} are not among the declared "
                         f"labels 0..{spec.num_classes - 1}")
    return image, label, geometry


def _format_values(values: object, limit: int = 10) -> str:
    items = [str(int(v)) if float(v).is_integer() else f"{float(v):g}" for v in values]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# ----------------------------------------------------------------------------- checking


@dataclass
class _ImageInfo:
    """What checking needs of a read image file (the array itself is dropped at once)."""

    path: Path
    channels: int
    shape: tuple[int, ...]
    geometry: Geometry


def check_dataset(spec: DatasetSpec, split: str = "Tr", allow_nan: bool = False) -> list[str]:
    """Every problem of a split as one-line "path: problem" strings; [] means it is usable.

    Each file is read once. A missing `imagesTs` is not a problem (test cases are optional).
    NaN/Inf in an image is one unless `allow_nan` (training then replaces them).
    """
    images_dir, labels_dir = _split_folders(spec, split)
    if not images_dir.is_dir():
        return [] if split == "Ts" else [f"{images_dir}: folder not found"]
    problems: list[str] = []
    groups, others = _scan_channel_files(images_dir, spec.file_ending)
    problems += [_stray_file_problem(p, spec, label=False) for p in others]
    if not groups:
        problems.append(f"{images_dir}: no cases found (expected files named "
                        f"{{case}}_0000{spec.file_ending})")

    label_files: dict[str, Path] = {}
    labels_found = labels_dir is not None and labels_dir.is_dir()
    if labels_dir is not None:
        if spec.num_training != len(groups):
            problems.append(f"{spec.root / DATASET_JSON}: numTraining is {spec.num_training} "
                            f"but {images_dir} holds {len(groups)} case(s)")
        if not labels_found:
            problems.append(f"{labels_dir}: folder not found")
        else:
            for path in _visible_files(labels_dir):
                stem = _stem(path, spec.file_ending)
                if stem is None:
                    problems.append(_stray_file_problem(path, spec, label=True))
                elif stem not in groups:
                    problems.append(f"{path}: label without image (no "
                                    f"{stem}_0000{spec.file_ending} in {images_dir})")
                else:
                    label_files[stem] = path

    present: set[int] = set()  # label values found in all label maps
    for name in sorted(groups):
        reference = _check_case_images(spec, images_dir, name, groups[name], problems,
                                       allow_nan)
        if not labels_found:
            continue
        if name not in label_files:
            problems.append(f"{labels_dir / (name + spec.file_ending)}: missing label "
                            f"for case '{name}'")
        else:
            present |= _check_label(spec, label_files[name], reference, problems)
    if present == {0}:
        problems.append(f"{labels_dir}: every label map is background only (0); there is "
                        f"nothing to learn (dataset.json declares {', '.join(spec.class_names)})")
    return problems


def _stray_file_problem(path: Path, spec: DatasetSpec, label: bool) -> str:
    ending = file_ending(path)
    if ending in SUPPORTED_FORMATS and spatial_dims_of_ending(ending) != spec.spatial_dims:
        return (f"{path}: {spatial_dims_of_ending(ending)}D file in a {spec.spatial_dims}D "
                f"dataset (file_ending '{spec.file_ending}')")
    if _stem(path, spec.file_ending) is None:
        return (f"{path}: file ending '{_ending_for_message(path)}' differs from "
                f"dataset.json's '{spec.file_ending}'")
    expected = "{case}" if label else "{case}_0000"
    return f"{path}: name does not follow {expected}{spec.file_ending}"


def _read_for_check(
    path: Path, spec: DatasetSpec, problems: list[str]
) -> tuple[np.ndarray, Geometry] | None:
    """Read a file for checking; record (not raise) why it cannot be used."""
    if spec.file_ending in (".tif", ".tiff"):
        frames = _tiff_frames(path)
        if frames > 1:
            problems.append(f"{path}: 3D file ({frames} TIFF frames) in a 2D dataset")
            return None
    try:
        return read_image(path)
    except LdsegError as exc:
        problems.append(str(exc))
        return None


def _tiff_frames(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except Exception:  # read_image reports unreadable files
        return 1


def _check_case_images(
    spec: DatasetSpec, images_dir: Path, name: str, files: dict[int, Path], problems: list[str],
    allow_nan: bool = False,
) -> _ImageInfo | None:
    """Check a case's channel files; return its first readable image to compare the label with."""
    infos: list[_ImageInfo] = []
    for index in sorted(files):
        result = _read_for_check(files[index], spec, problems)
        if result is not None:
            array, geometry = result
            if not allow_nan and np.issubdtype(array.dtype, np.floating):
                count = int((~np.isfinite(array)).sum())
                if count:
                    problems.append(f"{files[index]}: image contains NaN or Inf values ({count} "
                                    "voxels); fix the file, or pass --allow-nan to replace them")
            infos.append(_ImageInfo(files[index], array.shape[0], array.shape[1:], geometry))

    last = max(files)
    missing = [i for i in range(last + 1) if i not in files]
    total = sum(info.channels for info in infos)
    declared = spec.num_channels
    if len(infos) == len(files) and not missing and total < declared:
        missing = list(range(last + 1, last + 1 + declared - total))  # single-channel files
    for index in missing:
        problems.append(f"{images_dir / f'{name}_{index:04d}{spec.file_ending}'}: missing "
                        f"channel file (dataset.json declares {declared} channel(s), "
                        f"the files of case '{name}' supply {total})")
    if len(infos) == len(files) and total + len(missing) != declared:
        problems.append(f"{files[min(files)]}: case '{name}' has {len(files)} channel file(s) "
                        f"with {total} channel(s) in all, but dataset.json declares {declared} "
                        f"({', '.join(spec.channel_names)})")

    if not infos:
        return None
    first = infos[0]
    for info in infos[1:]:
        if info.shape != first.shape:
            problems.append(f"{info.path}: shape {info.shape} differs from {first.path.name}'s "
                            f"{first.shape}")
        elif spec.spatial_dims == 3:
            diff = geometry_difference(info.geometry, first.geometry)
            if diff:
                problems.append(f"{info.path}: geometry differs from {first.path.name}: {diff}")
    return first


def _check_label(
    spec: DatasetSpec, path: Path, image: _ImageInfo | None, problems: list[str]
) -> set[int]:
    """Check a label file; return the label values it holds (empty if unusable)."""
    result = _read_for_check(path, spec, problems)
    if result is None:
        return set()
    label, geometry = result
    if label.shape[0] != 1:
        problems.append(f"{path}: label has {label.shape[0]} channels, expected 1")
    if image is not None:
        if label.shape[1:] != image.shape:
            problems.append(f"{path}: label shape {label.shape[1:]} differs from the image "
                            f"shape {image.shape} of {image.path.name}")
        elif spec.spatial_dims == 3:
            diff = geometry_difference(geometry, image.geometry)
            if diff:
                problems.append(f"{path}: label geometry differs from the image "
                                f"{image.path.name}: {diff}")
    values = np.unique(label)
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        problems.append(f"{path}: label has non-integer values "
                        f"({_format_values(v for v in values if v != round(v))})")
        return set()
    undeclared = [v for v in values if not 0 <= v < spec.num_classes]
    if undeclared:
        problems.append(f"{path}: label values {_format_values(undeclared)} are not among the "
                        f"declared labels 0..{spec.num_classes - 1} "
                        f"({', '.join(spec.class_names)})")
    return {int(v) for v in values}


def geometry_difference(a: Geometry, b: Geometry, rtol: float = 1e-4) -> str:
    """Which of spacing/origin/direction of `a` differ from `b` beyond `rtol` ('' if none).

    Tolerance is relative to max(1, |value|), so float noise from format conversion passes.
    """
    names = []
    for field in ("spacing", "origin", "direction"):
        va, vb = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        if va.shape == vb.shape:
            scale = np.maximum(1.0, np.maximum(np.abs(va), np.abs(vb)))
            if np.all(np.abs(va - vb) <= rtol * scale):
                continue
        names.append(f"{field} {tuple(round(float(v), 6) for v in va)} vs "
                     f"{tuple(round(float(v), 6) for v in vb)}")
    return ", ".join(names)
