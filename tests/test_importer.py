"""Importing paired image/label folders into the standard dataset layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ORIGIN, save_png, save_sitk
from PIL import Image

from ldseg.data.dataset import DatasetSpec, check_dataset, list_cases, load_case
from ldseg.data.imageio import read_image
from ldseg.data.importer import import_paired_folders
from ldseg.errors import LdsegError

KNEE_CLASSES = ["background", "femur", "tibia"]




def _leftovers(parent: Path) -> list[str]:
    """Hidden temporary folders an import may have left beside its output."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def glas(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetSpec]:
    source = shared_data / "glas-sample"
    out = tmp_path_factory.mktemp("glas") / "GlaS"
    spec = import_paired_folders(source / "Image", source / "Label", out,
                                 instances_to_foreground=True)
    return source, spec


@pytest.fixture(scope="module")
def knee(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetSpec]:
    source = shared_data / "knee-sample"
    out = tmp_path_factory.mktemp("knee") / "Knee"
    spec = import_paired_folders(source / "Image", source / "Label", out,
                                 class_names=KNEE_CLASSES, name="KneeMRI")
    return source, spec


def test_glas_layout_and_json(glas: tuple[Path, DatasetSpec]) -> None:
    _, spec = glas
    assert json.loads((spec.root / "dataset.json").read_text()) == {
        "name": "GlaS",
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "class1": 1},
        "numTraining": 5,
        "file_ending": ".png",
    }
    cases = list_cases(spec)
    assert [c.name for c in cases] == [f"Case{i}" for i in range(1, 6)]
    assert all(len(c.image_files) == 1 and c.label_file is not None for c in cases)
    assert sorted(p.name for p in (spec.root / "imagesTr").iterdir()) == [
        f"Case{i}_0000.png" for i in range(1, 6)]
    assert not _leftovers(spec.root.parent)
    assert check_dataset(spec) == []


def test_glas_pixels(glas: tuple[Path, DatasetSpec]) -> None:
    source, spec = glas
    for case in list_cases(spec):
        with Image.open(case.image_files[0]) as img:
            assert img.mode == "RGB"
        with Image.open(case.label_file) as lbl:
            assert lbl.mode == "L"
        image, label, _ = load_case(case, spec)
        src_image, _ = read_image(source / "Image" / f"{case.name}.bmp")
        src_label, _ = read_image(source / "Label" / f"{case.name}_label.bmp")
        np.testing.assert_array_equal(image, src_image.astype(np.float32))
        assert label is not None
        np.testing.assert_array_equal(label, (src_label[0] > 0).astype(np.int64))
        assert set(np.unique(label)) == {0, 1}
        if case.name == "Case2":
            assert image.shape == (3, 453, 589)
        else:
            assert image.shape == (3, 522, 775)


def test_knee_layout_and_json(knee: tuple[Path, DatasetSpec]) -> None:
    _, spec = knee
    assert json.loads((spec.root / "dataset.json").read_text()) == {
        "name": "KneeMRI",
        "channel_names": {"0": "image"},
        "labels": {"background": 0, "femur": 1, "tibia": 2},
        "numTraining": 5,
        "file_ending": ".nii.gz",
    }
    assert len(list_cases(spec)) == 5 and spec.num_channels == 1
    assert check_dataset(spec) == []


def test_knee_voxels_and_geometry(knee: tuple[Path, DatasetSpec]) -> None:
    source, spec = knee
    for case in list_cases(spec):
        (image_file,) = case.image_files
        image, geometry = read_image(image_file)
        src_image, src_geometry = read_image(source / "Image" / f"{case.name}.nii.gz")
        assert image.dtype == src_image.dtype == np.int16
        assert image.shape == (1, 160, 104, 240)
        np.testing.assert_array_equal(image, src_image)
        assert geometry == src_geometry
        label, label_geometry = read_image(case.label_file)
        src_label, _ = read_image(source / "Label" / f"{case.name}_label.nii.gz")
        assert label.dtype == np.uint8 and label_geometry == src_geometry
        np.testing.assert_array_equal(label, src_label)
        assert set(np.unique(label)) == {0, 1, 2}


# ----------------------------------------------------------------------------- synthetic


def test_grey_16bit_stays_16bit(tmp_path: Path) -> None:
    grey = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300
    low = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)  # 16-bit even if all <= 255
    Image.fromarray(grey).save(tmp_path / "a.tif")
    Image.fromarray(low).save(tmp_path / "b.tif")
    label = np.zeros((12, 16), np.uint8)
    label[3:7, 2:9] = 1
    for name in ("a", "b"):
        Image.fromarray(label).save(tmp_path / f"{name}_label.tif")
    spec = import_paired_folders(tmp_path, tmp_path, tmp_path / "out")
    assert spec.file_ending == ".png" and spec.channel_names == ["image"]
    assert spec.class_names == ["background", "class1"]
    for name, source in (("a", grey), ("b", low)):
        with Image.open(spec.root / "imagesTr" / f"{name}_0000.png") as img:
            assert img.mode == "I;16"
        image, _ = read_image(spec.root / "imagesTr" / f"{name}_0000.png")
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image[0], source)
    assert check_dataset(spec) == []


def test_nii_becomes_nii_gz_with_exact_geometry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, 6, 5)).astype(np.float32)
    label = np.zeros((4, 6, 5), np.int16)
    label[1:3, 2:5, 1:4] = 2
    label[0, 0, 0] = 1
    save_sitk(tmp_path / "img" / "p1.nii", volume)
    # Float noise in the label's header: the label is written on the image's exact grid.
    save_sitk(tmp_path / "seg" / "p1_seg.nii", label,
               origin=(ORIGIN[0] + 1e-7, ORIGIN[1], ORIGIN[2]))
    spec = import_paired_folders(tmp_path / "img", tmp_path / "seg", tmp_path / "out",
                                 label_suffix="_seg", class_names=KNEE_CLASSES)
    assert spec.file_ending == ".nii.gz"
    (case,) = list_cases(spec)
    assert case.image_files[0].name == "p1_0000.nii.gz"
    image, geometry = read_image(case.image_files[0])
    source, src_geometry = read_image(tmp_path / "img" / "p1.nii")
    np.testing.assert_array_equal(image, source)
    assert geometry == src_geometry
    written_label, label_geometry = read_image(case.label_file)
    assert written_label.dtype == np.uint8 and label_geometry == src_geometry
    np.testing.assert_array_equal(written_label[0], label)
    assert check_dataset(spec) == []


def test_nrrd_stays_nrrd(tmp_path: Path) -> None:
    save_sitk(tmp_path / "img" / "x.nrrd", np.ones((3, 4, 5), np.uint8))
    save_sitk(tmp_path / "lab" / "x_label.nrrd", np.eye(4, 5, dtype=np.uint8)[None].repeat(3, 0))
    spec = import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    assert spec.file_ending == ".nrrd"
    assert (spec.root / "imagesTr" / "x_0000.nrrd").is_file()
    assert check_dataset(spec) == []


def test_instances_to_foreground_and_default_names(tmp_path: Path) -> None:
    label = np.zeros((8, 8), np.uint8)
    label[1:3, 1:3], label[5:7, 5:7] = 3, 17
    save_png(tmp_path / "img" / "g.png", np.zeros((3, 8, 8), np.uint8))
    save_png(tmp_path / "lab" / "g_label.png", label)
    with pytest.raises(LdsegError, match="not consecutive from 0") as info:
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    assert "instances" in str(info.value)
    spec = import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out",
                                 instances_to_foreground=True, channel_names=["r", "g", "b"])
    assert spec.class_names == ["background", "class1"]
    assert spec.channel_names == ["r", "g", "b"]
    _, written, _ = load_case(list_cases(spec)[0], spec)
    np.testing.assert_array_equal(written, (label > 0).astype(np.int64))


def _pair_2d(root: Path, names: list[str], label_value: int = 1) -> None:
    for name in names:
        save_png(root / "img" / f"{name}.png", np.zeros((6, 7), np.uint8))
        label = np.zeros((6, 7), np.uint8)
        label[2:4, 1:5] = label_value
        save_png(root / "lab" / f"{name}_label.png", label)


def test_images_without_labels_are_all_listed(tmp_path: Path) -> None:
    _pair_2d(tmp_path, ["a", "b", "c"])
    (tmp_path / "lab" / "a_label.png").unlink()
    (tmp_path / "lab" / "c_label.png").rename(tmp_path / "lab" / "c-mask.png")
    with pytest.raises(LdsegError) as info:
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    message = str(info.value)
    assert "no label for 2 image(s): a.png, c.png" in message and "c-mask.png" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


ERRORS = {
    "class names too few": ({"class_names": ["background"]}, 2, "at least two class names"),
    "class names short": ({"class_names": ["background", "a"]}, 2, "values up to 2"),
    "channel names": ({"channel_names": ["a", "b"]}, 1, "2 channel names given"),
    "only background": ({}, 0, "only background"),
}


@pytest.mark.parametrize("kwargs, value, message", ERRORS.values(), ids=ERRORS.keys())
def test_label_and_name_errors(tmp_path: Path, kwargs: dict, value: int, message: str) -> None:
    _pair_2d(tmp_path, ["a", "b"], label_value=value)
    with pytest.raises(LdsegError, match=message):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_mixed_formats_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    with pytest.raises(LdsegError, match="no images found"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    _pair_2d(tmp_path, ["a"])
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "img" / "b.bmp")
    with pytest.raises(LdsegError, match="mixed image formats"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    (tmp_path / "img" / "b.bmp").unlink()
    (tmp_path / "img" / "c.jpg").write_bytes(b"")
    with pytest.raises(LdsegError, match=r"c\.jpg: unsupported format"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    with pytest.raises(LdsegError, match="folder not found"):
        import_paired_folders(tmp_path / "nope", tmp_path / "lab", tmp_path / "out")


def test_shape_channel_and_geometry_mismatch(tmp_path: Path) -> None:
    _pair_2d(tmp_path, ["a", "b"])
    save_png(tmp_path / "lab" / "b_label.png", np.ones((5, 7), np.uint8))
    with pytest.raises(LdsegError, match=r"b_label\.png: label shape \(5, 7\) differs"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")
    save_png(tmp_path / "lab" / "b_label.png", np.ones((6, 7), np.uint8))
    save_png(tmp_path / "img" / "b.png", np.zeros((3, 6, 7), np.uint8))
    with pytest.raises(LdsegError, match=r"b\.png: has 3 channel\(s\) but .*a\.png has 1"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "out")

    save_sitk(tmp_path / "v" / "x.nii.gz", np.zeros((3, 4, 5), np.int16))
    save_sitk(tmp_path / "v" / "x_label.nii.gz", np.zeros((3, 4, 5), np.uint8),
               spacing=(1.0, 1.0, 1.0))
    with pytest.raises(LdsegError, match=r"x_label\.nii\.gz: label geometry differs.*spacing"):
        import_paired_folders(tmp_path / "v", tmp_path / "v", tmp_path / "out3d")
    assert not _leftovers(tmp_path)


def test_out_dir_overwrite(tmp_path: Path) -> None:
    _pair_2d(tmp_path, ["a"])
    out = tmp_path / "out"
    out.mkdir()
    import_paired_folders(tmp_path / "img", tmp_path / "lab", out)  # an empty folder is fine
    with pytest.raises(LdsegError, match="not empty"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", out)
    (out / "stale.txt").write_text("old")
    spec = import_paired_folders(tmp_path / "img", tmp_path / "lab", out, overwrite=True)
    assert not (out / "stale.txt").exists() and len(list_cases(spec)) == 1
    assert not _leftovers(tmp_path)
    with pytest.raises(LdsegError, match="must not contain the input"):
        import_paired_folders(tmp_path / "img", tmp_path / "lab", tmp_path, overwrite=True)
    assert (tmp_path / "img" / "a.png").is_file()
