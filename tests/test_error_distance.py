"""benchmarks/error_distance.py: errors binned by distance in mm, on hand-computed cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ldseg.data.imageio import Geometry, write_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
error_distance = pytest.importorskip("error_distance")


def _cube(shape: tuple[int, ...], lo: int, hi: int, label: int = 1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[tuple(slice(lo, hi) for _ in shape)] = label
    return out


def test_a_one_voxel_thicker_structure_is_all_fp_in_the_first_shell() -> None:
    ref = _cube((12, 12, 12), 4, 8)
    pred = _cube((12, 12, 12), 3, 9)  # one voxel thicker on every side
    counts = error_distance.error_by_distance(pred, ref, 1, (1.0, 1.0, 1.0))
    assert counts["fn"] == [0, 0, 0, 0, 0]
    # face neighbours at 1 mm, edge neighbours at sqrt 2, corners at sqrt 3: (1, 2] holds both
    faces = 6 * 4 * 4
    assert counts["fp"] == [faces, 6 * 6 * 6 - 4 * 4 * 4 - faces, 0, 0, 0]
    assert counts["fp_other_class"] == 0


def test_spacing_scales_the_distances_and_far_blobs_land_in_the_last_bin() -> None:
    ref = _cube((10, 10, 40), 2, 6)
    pred = ref.copy()
    pred[3, 3, 30] = 1  # 25 voxels beyond the cube along the last axis
    pred[2, 2, 2] = 0  # a corner voxel missed: depth 1 voxel
    near = error_distance.error_by_distance(pred, ref, 1, (1.0, 1.0, 1.0))
    assert near["fp"] == [0, 0, 0, 0, 1] and near["fn"] == [1, 0, 0, 0, 0]
    scaled = error_distance.error_by_distance(pred, ref, 1, (3.0, 3.0, 0.1))
    # 25 voxels of 0.1 mm = 2.5 mm away; the missed corner is 0.1 mm deep
    assert scaled["fp"] == [0, 0, 1, 0, 0] and scaled["fn"] == [1, 0, 0, 0, 0]


def test_fp_on_another_class_is_counted_as_confusion() -> None:
    ref = _cube((8, 8), 1, 4) + _cube((8, 8), 5, 7, label=2)
    pred = ref.copy()
    pred[pred == 2] = 1  # class 2 read as class 1
    counts = error_distance.error_by_distance(pred, ref, 1, (1.0, 1.0))
    assert counts["fp_other_class"] == 4 and sum(counts["fp"]) == 4


def test_command_sums_cases_writes_the_table_and_names_a_missing_prediction(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs, preds = tmp_path / "ref", tmp_path / "pred"
    refs.mkdir(), preds.mkdir()
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    for name in ("a", "b"):
        write_image(refs / f"{name}.nii.gz", _cube((8, 8, 8), 2, 6), geometry)
        write_image(preds / f"{name}.nii.gz", _cube((8, 8, 8), 1, 6), geometry)
    out = tmp_path / "table.md"
    assert error_distance.main([str(refs), f"m={preds}", "--output", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| m |")]
    assert len(rows) == 2 and rows[1].split("|")[-3].strip() == "0"  # no FN
    fp_total = int(rows[0].split("|")[-3])
    assert fp_total == 2 * (5 ** 3 - 4 ** 3)
    (preds / "b.nii.gz").unlink()
    assert error_distance.main([str(refs), str(preds)]) == 1
    assert "no prediction for b" in capsys.readouterr().err


def test_command_reads_the_spacing_in_array_order(tmp_path: Path) -> None:
    refs, preds = tmp_path / "ref", tmp_path / "pred"
    refs.mkdir(), preds.mkdir()
    ref = _cube((8, 8, 8), 2, 6)
    pred = ref.copy()
    pred[2:6, 2:6, 1] = 1  # one slab thicker along the last array axis only, 3 mm voxels
    geometry = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(refs / "a.nii.gz", ref, geometry)
    write_image(preds / "a.nii.gz", pred, geometry)
    out = tmp_path / "table.md"
    assert error_distance.main([str(refs), f"m={preds}", "--output", str(out)]) == 0
    fp_row = next(r for r in out.read_text().splitlines() if "FP outside" in r)
    assert [int(c) for c in fp_row.split("|")[4:9]] == [0, 0, 16, 0, 0]  # all at 3 mm
