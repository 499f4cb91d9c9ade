"""The nnU-Net style dataset: dataset.json parsing, case listing, loading and checking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DIRECTION, ORIGIN, SPACING_XYZ, save_png, save_sitk
from PIL import Image

from ldseg.data.dataset import (
    Case,
    DatasetSpec,
    check_dataset,
    find_image_cases,
    list_cases,
    load_case,
    load_dataset_spec,
    write_dataset_json,
)
from ldseg.data.imageio import Geometry
from ldseg.errors import LdsegError

SHAPE_2D = (12, 16)
SHAPE_3D = (4, 6, 5)  # numpy order z, y, x
# A rotation about z by 30 degrees: non-trivial direction cosines.
CLASSES = ["background", "femur", "tibia"]


# ----------------------------------------------------------------------------- builders


def _label_2d(seed: int) -> np.ndarray:
    label = np.zeros(SHAPE_2D, np.uint8)
    label[2:6, 3 + seed : 8 + seed] = 1
    label[7:10, 9:14] = 2
    return label




def make_2d(root: Path, cases: int = 2, rgb: bool = False) -> DatasetSpec:
    """A 2D PNG dataset, grey (1 channel) or RGB (3 channels in one file)."""
    rng = np.random.default_rng(0)
    channels = ["R", "G", "B"] if rgb else ["MRI"]
    write_dataset_json(root, channels, CLASSES, cases, ".png", "tiny2d")
    for i in range(cases):
        shape = (3, *SHAPE_2D) if rgb else SHAPE_2D
        save_png(root / "imagesTr" / f"case{i}_0000.png", rng.integers(0, 255, shape, np.uint8))
        save_png(root / "labelsTr" / f"case{i}.png", _label_2d(i))
    return load_dataset_spec(root)


def make_3d(root: Path, cases: int = 2, channels: int = 2) -> DatasetSpec:
    """A 3D NIfTI dataset with non-trivial spacing, origin and direction."""
    rng = np.random.default_rng(1)
    write_dataset_json(root, [f"mod{c}" for c in range(channels)], CLASSES, cases, ".nii.gz",
                       "tiny3d")
    for i in range(cases):
        for c in range(channels):
            save_sitk(root / "imagesTr" / f"vol{i}_{c:04d}.nii.gz",
                        rng.normal(size=SHAPE_3D).astype(np.float32))
        label = np.zeros(SHAPE_3D, np.uint8)
        label[1:3, 1:4, 1:3] = 1
        label[3, 4:, 3:] = 2
        save_sitk(root / "labelsTr" / f"vol{i}.nii.gz", label)
    return load_dataset_spec(root)


def _dataset_json(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _set_json(root: Path, **changes: object) -> None:
    data = _dataset_json(root)
    data.update(changes)
    (root / "dataset.json").write_text(json.dumps(data))


def _has(problems: list[str], *fragments: str) -> bool:
    """Whether one problem line contains all fragments."""
    return any(all(f in p for f in fragments) for p in problems)


# ----------------------------------------------------------------------------- dataset.json


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = make_2d(tmp_path, rgb=True)
    assert spec.name == "tiny2d"
    assert spec.channel_names == ["R", "G", "B"] and spec.num_channels == 3
    assert spec.class_names == CLASSES and spec.num_classes == 3
    assert spec.labels_dict() == {"background": 0, "femur": 1, "tibia": 2}
    assert spec.spatial_dims == 2 and spec.num_training == 2
    assert make_3d(tmp_path / "v").spatial_dims == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_write_dataset_json_rejects_duplicate_and_single_class(tmp_path: Path) -> None:
    with pytest.raises(LdsegError, match="unique"):
        write_dataset_json(tmp_path, ["a"], ["background", "x", "x"], 1, ".png", "n")
    with pytest.raises(LdsegError, match="at least one class"):
        write_dataset_json(tmp_path, ["a"], ["background"], 1, ".png", "n")
    assert not (tmp_path / "dataset.json").exists()


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(LdsegError, match="nowhere"):
        load_dataset_spec(tmp_path / "nowhere")
    with pytest.raises(LdsegError, match="dataset.json"):
        load_dataset_spec(tmp_path)


BAD_JSON = {
    "invalid JSON": ("{not json", "invalid JSON"),
    "not an object": ("[1, 2]", "JSON object"),
}

BAD_FIELDS = {
    "no channel_names": ({"channel_names": None}, "channel_names"),
    "channel_names list": ({"channel_names": ["MRI"]}, "channel_names"),
    "channel index gap": ({"channel_names": {"0": "a", "2": "b"}}, "channel_names"),
    "no labels": ({"labels": None}, "labels"),
    "label not int": ({"labels": {"background": 0, "femur": "1"}}, "femur"),
    "label bool": ({"labels": {"background": 0, "femur": True}}, "femur"),
    "not consecutive": ({"labels": {"background": 0, "femur": 2}}, "consecutive"),
    "no background": ({"labels": {"femur": 1, "tibia": 2}}, "consecutive"),
    "one class": ({"labels": {"background": 0}}, "at least one class"),
    "shared value": ({"labels": {"background": 0, "a": 1, "b": 1}}, "share"),
    "region based": ({"labels": {"background": 0, "whole": [1, 2]}}, "region"),
    "numTraining str": ({"numTraining": "2"}, "numTraining"),
    "numTraining missing": ({"numTraining": None}, "numTraining"),
    "ending unsupported": ({"file_ending": ".jpg"}, "file_ending"),
    "ending missing": ({"file_ending": None}, "file_ending"),
    "name not str": ({"name": 3}, "name"),
}


@pytest.mark.parametrize("text, message", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_malformed_json(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(LdsegError, match=message) as info:
        load_dataset_spec(tmp_path)
    assert str(tmp_path / "dataset.json") in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("changes, message", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_fields(tmp_path: Path, changes: dict, message: str) -> None:
    write_dataset_json(tmp_path, ["MRI"], CLASSES, 2, ".png", "x")
    data = _dataset_json(tmp_path)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(LdsegError, match=message) as info:
        load_dataset_spec(tmp_path)
    assert str(tmp_path / "dataset.json") in str(info.value)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- listing, loading


def test_list_cases_and_load_2d_rgb(tmp_path: Path) -> None:
    spec = make_2d(tmp_path, cases=3, rgb=True)
    cases = list_cases(spec)
    assert [c.name for c in cases] == ["case0", "case1", "case2"]
    assert cases[1].image_files == [tmp_path / "imagesTr" / "case1_0000.png"]
    assert cases[1].label_file == tmp_path / "labelsTr" / "case1.png"
    image, label, geometry = load_case(cases[1], spec)
    assert image.shape == (3, *SHAPE_2D) and image.dtype == np.float32
    source = np.array(Image.open(cases[1].image_files[0]))
    np.testing.assert_array_equal(image, np.moveaxis(source, -1, 0).astype(np.float32))
    assert label is not None and label.dtype == np.int64
    np.testing.assert_array_equal(label, _label_2d(1))
    assert geometry == Geometry.identity(2)
    assert check_dataset(spec) == []


def test_load_3d_multichannel_keeps_geometry(tmp_path: Path) -> None:
    spec = make_3d(tmp_path, cases=1, channels=2)
    (case,) = list_cases(spec)
    assert [p.name for p in case.image_files] == ["vol0_0000.nii.gz", "vol0_0001.nii.gz"]
    image, label, geometry = load_case(case, spec)
    assert image.shape == (2, *SHAPE_3D) and image.dtype == np.float32
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_files[1])))
    np.testing.assert_array_equal(image[1], second)
    assert label is not None and label.shape == SHAPE_3D and set(np.unique(label)) == {0, 1, 2}
    assert geometry.spacing == pytest.approx(SPACING_XYZ[::-1])
    assert geometry.origin == pytest.approx(ORIGIN)
    assert geometry.direction == pytest.approx(DIRECTION)
    assert check_dataset(spec) == []


def test_load_case_checks_against_spec(tmp_path: Path) -> None:
    spec = make_2d(tmp_path, rgb=True)
    grey = DatasetSpec(spec.root, "g", ["MRI"], CLASSES, 2, ".png")
    with pytest.raises(LdsegError, match="3 channels"):
        load_case(list_cases(spec)[0], grey)
    save_png(tmp_path / "labelsTr" / "case0.png", np.full(SHAPE_2D, 5, np.uint8))
    with pytest.raises(LdsegError, match="label values 5"):
        load_case(list_cases(spec)[0], spec)
    image, label, _ = load_case(list_cases(spec)[0])  # without a spec values are not checked
    assert label is not None and label.max() == 5 and image.shape[0] == 3


def test_test_split(tmp_path: Path) -> None:
    spec = make_2d(tmp_path)
    assert list_cases(spec, "Ts") == [] and check_dataset(spec, "Ts") == []
    save_png(tmp_path / "imagesTs" / "new_0000.png", np.zeros(SHAPE_2D, np.uint8))
    assert list_cases(spec, "Ts") == [Case("new", [tmp_path / "imagesTs" / "new_0000.png"], None)]
    assert check_dataset(spec, "Ts") == []
    with pytest.raises(LdsegError, match="split"):
        list_cases(spec, "Val")


def test_find_image_cases(tmp_path: Path) -> None:
    grouped = tmp_path / "grouped"
    for name in ("b_0000", "b_0001", "a_0000", "a_0001"):
        save_png(grouped / f"{name}.png", np.zeros(SHAPE_2D, np.uint8))
    (grouped / ".b_0000.png.tmp.png").write_bytes(b"")  # hidden temp files are ignored
    (grouped / "notes.txt").write_text("other endings are ignored")
    cases = find_image_cases(grouped, ".png")
    assert [c.name for c in cases] == ["a", "b"]
    assert [p.name for p in cases[1].image_files] == ["b_0000.png", "b_0001.png"]
    assert all(c.label_file is None for c in cases)

    plain = tmp_path / "plain"
    for name in ("scan2", "scan1"):
        save_png(plain / f"{name}.png", np.zeros(SHAPE_2D, np.uint8))
    assert [(c.name, len(c.image_files)) for c in find_image_cases(plain, ".png")] == [
        ("scan1", 1), ("scan2", 1)]

    numbered = tmp_path / "numbered"  # slice numbers, not channel indices
    for i in (1, 2, 3):
        save_png(numbered / f"slice_{i:04d}.png", np.zeros(SHAPE_2D, np.uint8))
    assert [c.name for c in find_image_cases(numbered, ".png")] == [
        "slice_0001", "slice_0002", "slice_0003"]
    for i in (0, 1):
        save_png(numbered / f"from0_{i:04d}.png", np.zeros(SHAPE_2D, np.uint8))
    assert len(find_image_cases(numbered, ".png", num_channels=1)) == 5


def test_find_image_cases_errors(tmp_path: Path) -> None:
    with pytest.raises(LdsegError, match="not found"):
        find_image_cases(tmp_path / "missing", ".png")
    with pytest.raises(LdsegError, match="empty"):
        find_image_cases(tmp_path, ".png")
    save_png(tmp_path / "a.png", np.zeros(SHAPE_2D, np.uint8))
    with pytest.raises(LdsegError, match=r"no '\.nii\.gz' images found \(found \.png\)"):
        find_image_cases(tmp_path, ".nii.gz")
    save_png(tmp_path / "a_0000.png", np.zeros(SHAPE_2D, np.uint8))
    with pytest.raises(LdsegError, match="both name case 'a'"):
        find_image_cases(tmp_path, ".png")


# ----------------------------------------------------------------------------- check_dataset, 2D


def test_check_numtraining(tmp_path: Path) -> None:
    spec = make_2d(tmp_path)
    _set_json(tmp_path, numTraining=5)
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert problems == [f"{tmp_path / 'dataset.json'}: numTraining is 5 but "
                        f"{tmp_path / 'imagesTr'} holds 2 case(s)"]
    assert spec.num_training == 2


def test_check_missing_channel_files(tmp_path: Path) -> None:
    make_2d(tmp_path)
    _set_json(tmp_path, channel_names={"0": "T1", "1": "T2", "2": "FLAIR"})
    problems = check_dataset(load_dataset_spec(tmp_path))
    for case in ("case0", "case1"):
        for index in (1, 2):
            assert _has(problems, f"{case}_{index:04d}.png", "missing channel file")
    assert len(problems) == 4


def test_check_channel_gap(tmp_path: Path) -> None:
    make_2d(tmp_path, cases=1)
    _set_json(tmp_path, channel_names={"0": "T1", "1": "T2", "2": "FLAIR"})
    save_png(tmp_path / "imagesTr" / "case0_0002.png", np.zeros(SHAPE_2D, np.uint8))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert len(problems) == 1 and _has(problems, "case0_0001.png", "missing channel file")


def test_check_channel_count_mismatch(tmp_path: Path) -> None:
    make_2d(tmp_path, rgb=True)
    _set_json(tmp_path, channel_names={"0": "MRI"})
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "case0_0000.png", "3 channel(s) in all", "declares 1")
    assert _has(problems, "case1_0000.png", "3 channel(s) in all", "declares 1")
    make_2d(tmp_path / "extra", cases=1)
    save_png(tmp_path / "extra" / "imagesTr" / "case0_0001.png", np.zeros(SHAPE_2D, np.uint8))
    problems = check_dataset(load_dataset_spec(tmp_path / "extra"))
    assert problems and _has(problems, "2 channel file(s) with 2 channel(s)", "declares 1")


def test_check_missing_label_and_orphan_label(tmp_path: Path) -> None:
    make_2d(tmp_path)
    (tmp_path / "labelsTr" / "case1.png").unlink()
    save_png(tmp_path / "labelsTr" / "ghost.png", _label_2d(0))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "labelsTr/case1.png", "missing label")
    assert _has(problems, "labelsTr/ghost.png", "label without image")
    assert len(problems) == 2


def test_check_corrupt_files(tmp_path: Path) -> None:
    make_2d(tmp_path)
    (tmp_path / "imagesTr" / "case0_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "labelsTr" / "case1.png").write_bytes(b"")
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "case0_0000.png", "cannot read")
    assert _has(problems, "labelsTr/case1.png", "cannot read")
    assert len(problems) == 2
    assert all("\n" not in p for p in problems)


def test_check_label_shape_values_and_channels(tmp_path: Path) -> None:
    make_2d(tmp_path, cases=3)
    save_png(tmp_path / "labelsTr" / "case0.png", np.zeros((10, 16), np.uint8))
    bad_values = _label_2d(1)
    bad_values[0, 0], bad_values[0, 1] = 7, 9
    save_png(tmp_path / "labelsTr" / "case1.png", bad_values)
    save_png(tmp_path / "labelsTr" / "case2.png", np.stack([_label_2d(2), _label_2d(1),
                                                              _label_2d(0)]))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "case0.png", "label shape (10, 16) differs", "(12, 16)")
    assert _has(problems, "case1.png", "label values 7, 9 are not among the declared labels")
    assert _has(problems, "case2.png", "label has 3 channels")


def test_check_wrong_dimensionality_and_names(tmp_path: Path) -> None:
    make_2d(tmp_path)
    save_sitk(tmp_path / "imagesTr" / "case0_0001.nii.gz", np.zeros(SHAPE_3D, np.uint8))
    save_png(tmp_path / "imagesTr" / "nochannel.png", np.zeros(SHAPE_2D, np.uint8))
    save_png(tmp_path / "imagesTr" / "other_0000.bmp", np.zeros(SHAPE_2D, np.uint8))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "case0_0001.nii.gz", "3D file in a 2D dataset")
    assert _has(problems, "nochannel.png", "does not follow {case}_0000.png")
    assert _has(problems, "other_0000.bmp", "file ending '.bmp' differs")
    assert len(problems) == 3


def test_check_multiframe_tiff(tmp_path: Path) -> None:
    write_dataset_json(tmp_path, ["MRI"], CLASSES, 1, ".tif", "tif")
    (tmp_path / "imagesTr").mkdir()
    frames = [Image.fromarray(np.full(SHAPE_2D, i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "imagesTr" / "c_0000.tif", save_all=True,
                   append_images=frames[1:])
    save_png(tmp_path / "labelsTr" / "c.tif", _label_2d(0))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert problems == [f"{tmp_path / 'imagesTr' / 'c_0000.tif'}: 3D file (3 TIFF frames) "
                        "in a 2D dataset"]


def test_check_empty_dataset(tmp_path: Path) -> None:
    write_dataset_json(tmp_path, ["MRI"], CLASSES, 0, ".png", "empty")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    assert check_dataset(load_dataset_spec(tmp_path)) == [
        f"{tmp_path / 'imagesTr'}: no cases found (expected files named {{case}}_0000.png)"]
    (tmp_path / "imagesTr").rmdir()
    assert check_dataset(load_dataset_spec(tmp_path)) == [
        f"{tmp_path / 'imagesTr'}: folder not found"]
    with pytest.raises(LdsegError, match="imagesTr: folder not found"):
        list_cases(load_dataset_spec(tmp_path))


# ----------------------------------------------------------------------------- check_dataset, 3D


def test_check_3d_channel_shapes_and_geometry(tmp_path: Path) -> None:
    make_3d(tmp_path, cases=4)
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    save_sitk(images / "vol0_0001.nii.gz", np.zeros((4, 6, 4), np.float32))
    label = np.zeros(SHAPE_3D, np.uint8)
    save_sitk(labels / "vol1.nii.gz", label, spacing=(0.7, 0.8, 3.0))
    save_sitk(labels / "vol2.nii.gz", label, origin=(10.0, -5.0, 4.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    # Float noise far below 1e-4 relative is not a problem.
    save_sitk(labels / "vol3.nii.gz", label, spacing=(0.7 * (1 + 1e-7), 0.8, 2.5),
                origin=(10.0 + 1e-7, -5.0, 3.0))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "vol0_0001.nii.gz", "shape (4, 6, 4) differs", "vol0_0000.nii.gz")
    assert _has(problems, "vol1.nii.gz", "label geometry differs", "spacing")
    assert _has(problems, "vol2.nii.gz", "origin", "direction")
    assert not _has(problems, "vol2.nii.gz", "spacing")
    assert not _has(problems, "vol3.nii.gz")
    assert len(problems) == 3


def test_check_3d_2d_nifti_and_truncated(tmp_path: Path) -> None:
    make_3d(tmp_path, cases=2, channels=1)
    flat = sitk.GetImageFromArray(np.zeros((6, 5), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "imagesTr" / "vol0_0000.nii.gz"))
    data = (tmp_path / "labelsTr" / "vol1.nii.gz").read_bytes()
    (tmp_path / "labelsTr" / "vol1.nii.gz").write_bytes(data[: len(data) // 2])
    save_png(tmp_path / "labelsTr" / "vol0.png", np.zeros(SHAPE_2D, np.uint8))
    problems = check_dataset(load_dataset_spec(tmp_path))
    assert _has(problems, "vol0_0000.nii.gz", "expected a 3D image")
    assert _has(problems, "vol1.nii.gz", "cannot read")
    assert _has(problems, "vol0.png", "2D file in a 3D dataset")
    assert len(problems) == 3


def test_check_reports_all_problems_at_once(tmp_path: Path) -> None:
    spec = make_3d(tmp_path, cases=5)
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    _set_json(tmp_path, numTraining=7)
    (images / "vol0_0001.nii.gz").unlink()                                   # missing channel
    (labels / "vol1.nii.gz").unlink()                                        # missing label
    save_sitk(labels / "orphan.nii.gz", np.zeros(SHAPE_3D, np.uint8))      # label, no image
    (images / "vol2_0000.nii.gz").write_bytes(b"not a nifti")                # corrupt
    bad = np.zeros(SHAPE_3D, np.uint8)
    bad[0, 0, 0] = 4
    save_sitk(labels / "vol3.nii.gz", bad, spacing=(1.0, 1.0, 1.0))        # values + geometry
    save_sitk(labels / "vol4.nii.gz", np.zeros((3, 6, 5), np.uint8))      # shape
    problems = check_dataset(load_dataset_spec(tmp_path))
    expected = [
        ("dataset.json", "numTraining is 7"),
        ("vol0_0001.nii.gz", "missing channel file"),
        ("vol1.nii.gz", "missing label"),
        ("orphan.nii.gz", "label without image"),
        ("vol2_0000.nii.gz", "cannot read"),
        ("vol3.nii.gz", "label values 4"),
        ("vol3.nii.gz", "label geometry differs", "spacing"),
        ("vol4.nii.gz", "label shape (3, 6, 5) differs"),
    ]
    for fragments in expected:
        assert _has(problems, *fragments), (fragments, problems)
    assert len(problems) == len(expected), problems
    assert spec.num_channels == 2
