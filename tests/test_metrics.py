"""Tests for `ldseg.evaluation.metrics`: hand-computed scores, nnU-Net's NaN rules, folders.

Surface metrics are checked against hand-computed values and against a brute force over all
pairs of boundary pixels, with MONAI's boundary definition: the mask minus its binary
erosion by the cross-shaped (4-/6-neighbourhood) structuring element, the outside of the
image counting as background; distances between pixel centres, each axis times its spacing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ldseg.data.imageio import Geometry, write_image
from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import (
    METRIC_KEYS,
    case_metrics,
    csv_path_for,
    evaluate_folders,
    format_table,
    load_dataset_labels,
    load_summary,
    summarize,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """4x4 maps with class 1: TP 2, FP 1, FN 2 and class 2: TP 1, FP 1, FN 2."""
    ref = np.zeros((4, 4), dtype=np.uint8)
    ref[0, 0:4] = 1
    ref[2, 0:3] = 2
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[0, 0:2] = 1
    pred[1, 0] = 1
    pred[2, 0] = 2
    pred[3, 3] = 2
    return pred, ref


def test_hand_computed_counts_and_scores() -> None:
    pred, ref = _pair()
    m = case_metrics(pred, ref, [1, 2])
    assert set(m) == {"1", "2"}
    assert set(m["1"]) == set(METRIC_KEYS)
    assert (m["1"]["TP"], m["1"]["FP"], m["1"]["FN"], m["1"]["TN"]) == (2, 1, 2, 11)
    assert (m["1"]["n_pred"], m["1"]["n_ref"]) == (3, 4)
    assert m["1"]["Dice"] == 4 / 7 and m["1"]["IoU"] == 2 / 5
    assert (m["2"]["TP"], m["2"]["FP"], m["2"]["FN"], m["2"]["TN"]) == (1, 1, 2, 12)
    assert m["2"]["Dice"] == 2 / 5 and m["2"]["IoU"] == 1 / 4
    perfect = case_metrics(ref, ref, [1, 2])
    assert perfect["1"]["Dice"] == perfect["2"]["IoU"] == 1.0


def test_float_label_maps_are_accepted_but_probabilities_are_not() -> None:
    pred, ref = _pair()
    m = case_metrics(pred.astype(np.float32), ref.astype(np.float64), [1])
    assert m["1"]["Dice"] == 4 / 7
    with pytest.raises(LdsegError, match="not a label map"):
        case_metrics(pred * 0.5, ref, [1])


def test_empty_vs_empty_is_nan_and_left_out_of_the_mean() -> None:
    pred, ref = _pair()
    empty = np.zeros_like(ref)
    only_class_1 = np.where(ref == 1, 1, 0)
    case_a = case_metrics(pred, ref, [1, 2])
    case_b = case_metrics(only_class_1, only_class_1, [1, 2])
    assert math.isnan(case_b["2"]["Dice"]) and math.isnan(case_b["2"]["IoU"])
    assert case_b["2"]["TN"] == 16
    summary = summarize([case_a, case_b], [1, 2], None)
    assert summary["mean"]["2"]["Dice"] == pytest.approx(2 / 5)  # case b excluded
    assert summary["mean"]["1"]["Dice"] == pytest.approx((4 / 7 + 1) / 2)
    assert summary["mean"]["2"]["TN"] == pytest.approx((12 + 16) / 2)
    all_empty = summarize([case_metrics(empty, empty, [1])], [1], None)
    assert math.isnan(all_empty["mean"]["1"]["Dice"])


def test_empty_reference_with_prediction_scores_zero() -> None:
    ref = np.zeros((3, 3), dtype=np.uint8)
    pred = ref.copy()
    pred[1, 1] = 1
    m = case_metrics(pred, ref, [1])["1"]
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0 and m["FP"] == 1 and m["n_ref"] == 0


def test_missed_structure_scores_zero_and_lowers_the_mean() -> None:
    pred, ref = _pair()
    missed = np.where(pred == 2, 0, pred)  # class 2 not predicted at all
    m = case_metrics(missed, ref, [2])["2"]
    assert m["Dice"] == 0.0 and m["FN"] == 3 and m["n_pred"] == 0
    good = case_metrics(ref, ref, [1, 2])
    summary = summarize([good, case_metrics(missed, ref, [1, 2])], [1, 2], None)
    assert summary["mean"]["2"]["Dice"] == pytest.approx(0.5)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        (summary["mean"]["1"]["Dice"] + 0.5) / 2
    )


def test_shape_mismatch_in_memory() -> None:
    with pytest.raises(LdsegError, match="shape"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 3)), [1])


def _check_schema(summary: dict, keys: set[str]) -> None:
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean", "class_names",
                            "nsd_tolerance_mm"}
    assert set(summary["mean"]) == keys
    assert set(summary["foreground_mean"]) == set(METRIC_KEYS)
    for entry in summary["metric_per_case"]:
        assert set(entry) == {"metrics", "prediction_file", "reference_file"}
        assert set(entry["metrics"]) == keys
        for values in entry["metrics"].values():
            assert set(values) == set(METRIC_KEYS)


def _same(a: object, b: object) -> bool:
    """Deep equality in which NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_evaluate_folders_png_end_to_end(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred, ref = _pair()
    write_image(ref_dir / "a.png", ref)
    write_image(pred_dir / "a.png", pred)
    only_1 = np.where(ref == 1, 1, 0).astype(np.uint8)
    write_image(ref_dir / "b.png", only_1)
    write_image(pred_dir / "b.png", only_1)
    # What predict also leaves in its folder must not count.
    write_image(pred_dir / "uncertainty" / "a.png", np.zeros((9, 9), np.uint8))
    write_image(pred_dir / "extra_case.png", np.zeros((9, 9), np.uint8))
    (pred_dir / "a.nii.gz").write_bytes(b"not an image")
    (pred_dir / "summary.json").write_text("{}")

    summary = evaluate_folders(pred_dir, ref_dir, class_names={1: "femur", 2: "tibia"})
    _check_schema(summary, {"1", "2"})
    assert summary["class_names"] == {"1": "femur", "2": "tibia"}
    cases = summary["metric_per_case"]
    assert [Path(c["reference_file"]).name for c in cases] == ["a.png", "b.png"]
    assert Path(cases[0]["prediction_file"]) == pred_dir / "a.png"
    assert cases[0]["metrics"]["1"]["Dice"] == 4 / 7
    assert math.isnan(cases[1]["metrics"]["2"]["Dice"])
    assert summary["mean"]["2"]["Dice"] == pytest.approx(2 / 5)

    written = pred_dir / "summary.json"
    text = written.read_text()
    assert "NaN" in text
    assert _same(json.loads(text), summary)
    assert _same(load_summary(written), summary)
    assert sorted(p.name for p in pred_dir.iterdir() if p.name.startswith(".")) == []


def test_evaluate_folders_nifti_with_dataset_json(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
    ref = np.zeros((3, 4, 5), dtype=np.uint8)
    ref[1, 1:3, 1:4] = 1  # 6 voxels
    pred = ref.copy()
    pred[1, 1, 1] = 0  # TP 5, FN 1
    pred[0, 0, 0] = 2  # FP for class 2, which no reference contains
    write_image(ref_dir / "case_001.nii.gz", ref, geometry)
    write_image(pred_dir / "case_001.nii.gz", pred, geometry)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2,
                                              "vessel": 3}}))
    labels, names = load_dataset_labels(dataset)
    assert labels == [1, 2, 3] and names == {1: "liver", 2: "tumour", 3: "vessel"}

    out = tmp_path / "eval" / "summary.json"
    summary = evaluate_folders(pred_dir, ref_dir, labels=labels, class_names=names,
                               output_file=out)
    _check_schema(summary, {"1", "2", "3"})
    m = summary["metric_per_case"][0]["metrics"]
    assert m["1"]["Dice"] == 10 / 11 and m["1"]["IoU"] == 5 / 6 and m["1"]["TN"] == 60 - 6
    assert m["2"]["Dice"] == 0.0 and m["2"]["FP"] == 1
    assert math.isnan(m["3"]["Dice"])
    # As nnU-Net: a class NaN in every case makes the foreground mean NaN.
    assert math.isnan(summary["foreground_mean"]["Dice"])
    assert summary["foreground_mean"]["TP"] == pytest.approx(5 / 3)
    assert _same(load_summary(out), summary)
    assert not (pred_dir / "summary.json").exists()

    table = format_table(load_summary(out))
    for expected in ("liver (1)", "tumour (2)", "vessel (3)", "case_001", "mean", "0.9091",
                     "n/a"):
        assert expected in table
    assert len({len(line) for line in table.splitlines()[:3]}) <= 2  # fixed-width header rows


def test_labels_default_to_values_in_references(tmp_path: Path) -> None:
    pred, ref = _pair()
    write_image(tmp_path / "ref" / "x.png", ref)
    write_image(tmp_path / "pred" / "x.png", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert set(summary["mean"]) == {"1", "2"} and "class_names" not in summary
    assert "label 1" in format_table(summary)


def test_missing_predictions_are_listed(tmp_path: Path) -> None:
    pred, ref = _pair()
    for name in ("a", "b", "c"):
        write_image(tmp_path / "ref" / f"{name}.png", ref)
    write_image(tmp_path / "pred" / "b.png", pred)
    with pytest.raises(LdsegError, match="2 of 3") as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert "a, c" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "pred" / "summary.json").exists()


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    pred, ref = _pair()
    write_image(tmp_path / "ref" / "a.png", ref)
    write_image(tmp_path / "pred" / "a.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(LdsegError, match=r"a\.png.*\(5, 4\).*\(4, 4\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")


def test_multichannel_reference_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "ref").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ref" / "a.png")
    write_image(tmp_path / "pred" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(LdsegError, match="single-channel"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(LdsegError, match="not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "ref")
    with pytest.raises(LdsegError, match="no reference images"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    write_image(tmp_path / "ref" / "a.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "ref" / "b.nii.gz", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(LdsegError, match="several formats"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    write_image(tmp_path / "pred" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(LdsegError, match="no foreground labels"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", file_ending="png")


def test_load_dataset_labels_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "2": "b", "1": "a"}}))
    assert load_dataset_labels(path) == ([1, 2], {1: "a", 2: "b"})
    bad = [
        "{not json",
        json.dumps({"name": "x"}),
        json.dumps({"labels": {"background": 0}}),
        json.dumps({"labels": {"background": 0, "a": 1, "b": 1}}),
        json.dumps({"labels": {"background": 0, "a": [1, 2]}}),
        json.dumps({"labels": {"background": 0, "a": 1.5}}),
        json.dumps({"labels": {"background": 0, "a": 1, "ignore": 2}}),
    ]
    for text in bad:
        path.write_text(text)
        with pytest.raises(LdsegError):
            load_dataset_labels(path)
    with pytest.raises(LdsegError, match="not found"):
        load_dataset_labels(tmp_path / "missing.json")


# --- surface and volume metrics -------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    """MONAI's boundary: pixels of the mask with a 4- (6-) neighbour outside it or the image."""
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    return mask & ~interior[(slice(1, -1),) * mask.ndim]


def _brute_force(pred: np.ndarray, ref: np.ndarray, spacing, tolerance: float):
    """HD95, ASSD and NSD from all pairwise boundary distances (np.percentile interpolates
    linearly, as torch.quantile does in MONAI)."""
    scale = np.asarray(spacing, dtype=np.float64)
    bp = np.argwhere(_boundary(pred)) * scale
    br = np.argwhere(_boundary(ref)) * scale
    d = np.sqrt(((bp[:, None, :] - br[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assd = np.concatenate([d_pr, d_rp]).mean()
    nsd = ((d_pr <= tolerance).sum() + (d_rp <= tolerance).sum()) / (d_pr.size + d_rp.size)
    return hd95, assd, nsd


def _squares(shift: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """20x20 images: a 10x10 reference square, the prediction shifted by `shift` along axis 0."""
    ref = np.zeros((20, 20), dtype=np.uint8)
    ref[4:14, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[4 + shift:14 + shift, 5:15] = 1
    return pred, ref


def _approx(value: float):
    return pytest.approx(value, rel=1e-5, abs=1e-5)  # MONAI's distances are float32


def test_shifted_squares_hand_computed() -> None:
    # Each square's boundary has 36 pixels. From the shifted square's top row (6, c), c = 5..14,
    # the nearest reference boundary pixel is at min(2, c - 5, 14 - c): 0,1,2,2,2,2,2,2,1,0;
    # its side columns are on the reference's sides (0) for rows 7..13 and 1 away at row 14;
    # its bottom row is 2 below the reference's. Sum 14 + 2 + 20 = 36 each way (the reverse
    # direction is the mirror image), so ASSD = 72 / 72; 16 of 36 distances are 2, so the 95th
    # percentile is 2 each way.
    pred, ref = _squares()
    m = case_metrics(pred, ref, [1])["1"]
    assert m["HD95"] == _approx(2.0)
    assert m["ASSD"] == _approx(1.0)
    assert m["NSD"] == _approx(20 / 36)  # 16 zeros + 4 ones within 1 mm, each way
    assert (m["HD95"], m["ASSD"], m["NSD"]) == tuple(map(_approx, _brute_force(pred, ref,
                                                                               (1, 1), 1.0)))
    assert m["Dice"] == pytest.approx(0.8)
    assert m["VolumeDifference"] == 0.0 and m["VolumePred_mm3"] == m["VolumeRef_mm3"] == 100.0


def test_anisotropic_spacing_scales_distances_per_axis() -> None:
    # Spacing (2.0, 0.5): the 2-pixel shift along axis 0 is 4 mm. Top row distances become
    # min(4, 0.5 (c - 5), 0.5 (14 - c)) (sum 10), the side pixel at row 14 is 2 mm away, the
    # bottom row 4 mm: 10 + 4 + 40 = 54 each way, ASSD 108 / 72; ten 4s -> HD95 4.
    pred, ref = _squares()
    spacing = (2.0, 0.5)
    m = case_metrics(pred, ref, [1], spacing=spacing)["1"]
    assert m["HD95"] == _approx(4.0)
    assert m["ASSD"] == _approx(1.5)
    assert m["NSD"] == _approx(20 / 36)  # 16 zeros, two 0.5 and two 1.0 each way
    for tolerance in (0.4, 1.0, 2.5, 3.0):
        m = case_metrics(pred, ref, [1], spacing=spacing, nsd_tolerance_mm=tolerance)["1"]
        expected = _brute_force(pred, ref, spacing, tolerance)
        assert (m["HD95"], m["ASSD"], m["NSD"]) == tuple(map(_approx, expected))
    assert m["VolumeRef_mm3"] == 100.0  # 100 pixels of 1 mm2
    # Swapping the spacing puts the shift along the fine axis: 1 mm.
    assert case_metrics(pred, ref, [1], spacing=(0.5, 2.0))["1"]["HD95"] == _approx(1.0)


def test_nsd_identical_and_shifted() -> None:
    pred, ref = _squares()
    same = case_metrics(ref, ref, [1])["1"]
    assert same["NSD"] == 1.0 and same["HD95"] == 0.0 and same["ASSD"] == 0.0
    below = case_metrics(pred, ref, [1], nsd_tolerance_mm=0.5)["1"]["NSD"]
    assert 0 < below < 1 and below == _approx(16 / 36)
    assert case_metrics(pred, ref, [1], nsd_tolerance_mm=2.5)["1"]["NSD"] == 1.0
    assert case_metrics(pred, ref, [1], nsd_tolerance_mm=2.0)["1"]["NSD"] == 1.0  # inclusive


def test_missed_structure_scores_the_diagonal() -> None:
    pred, ref = _squares()
    empty = np.zeros_like(ref)
    m = case_metrics(empty, ref, [1], spacing=(2.0, 0.5))["1"]
    diagonal = math.sqrt(40.0**2 + 10.0**2)
    assert m["HD95"] == m["ASSD"] == pytest.approx(diagonal)
    assert m["NSD"] == 0.0 and m["Dice"] == 0.0
    assert m["VolumeDifference"] == -1.0 and m["VolumePred_mm3"] == 0.0
    # A miss never improves an average: compare two cases with and without it.
    good = case_metrics(pred, ref, [1])
    worse = summarize([good, case_metrics(empty, ref, [1])], [1], None)["mean"]["1"]
    alone = summarize([good], [1], None)["mean"]["1"]
    assert worse["HD95"] > alone["HD95"] and worse["ASSD"] > alone["ASSD"]
    assert worse["NSD"] < alone["NSD"] and worse["Dice"] < alone["Dice"]
    assert worse["HD95"] == pytest.approx((2.0 + 20 * math.sqrt(2)) / 2, rel=1e-6)


def test_empty_reference_with_prediction_scores_the_diagonal() -> None:
    ref = np.zeros((3, 4), dtype=np.uint8)
    pred = ref.copy()
    pred[1, 1] = 1
    m = case_metrics(pred, ref, [1], spacing=(1.5, 2.0))["1"]
    assert m["HD95"] == m["ASSD"] == pytest.approx(math.sqrt(4.5**2 + 8.0**2))
    assert m["NSD"] == 0.0 and m["Dice"] == 0.0
    assert math.isnan(m["VolumeDifference"])  # relative to a zero volume
    assert m["VolumePred_mm3"] == 3.0 and m["VolumeRef_mm3"] == 0.0


def test_empty_vs_empty_surface_metrics_are_nan_and_left_out() -> None:
    pred, ref = _squares()
    empty = np.zeros_like(ref)
    m = case_metrics(empty, empty, [1])["1"]
    for key in ("Dice", "IoU", "HD95", "ASSD", "NSD", "VolumeDifference"):
        assert math.isnan(m[key]), key
    assert m["VolumePred_mm3"] == m["VolumeRef_mm3"] == 0.0
    shifted = case_metrics(pred, ref, [1])
    summary = summarize([shifted, case_metrics(empty, empty, [1])], [1], None)
    for key in ("HD95", "ASSD", "NSD", "Dice"):
        assert summary["mean"]["1"][key] == shifted["1"][key], key
        assert summary["foreground_mean"][key] == shifted["1"][key], key
    assert math.isnan(summarize([{"1": m}], [1], None)["mean"]["1"]["HD95"])


def test_volume_difference_sign() -> None:
    ref = np.zeros((20, 20), dtype=np.uint8)
    ref[4:14, 5:15] = 1  # 100 pixels
    larger = np.zeros_like(ref)
    larger[4:16, 5:15] = 1  # 120
    smaller = np.zeros_like(ref)
    smaller[4:12, 5:15] = 1  # 80
    over = case_metrics(larger, ref, [1], spacing=(2.0, 0.5))["1"]
    assert over["VolumeDifference"] == pytest.approx(0.2) and over["VolumePred_mm3"] == 120.0
    under = case_metrics(smaller, ref, [1], spacing=(2.0, 0.5))["1"]
    assert under["VolumeDifference"] == pytest.approx(-0.2) and under["VolumeRef_mm3"] == 100.0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated argument
def test_3d_case_with_anisotropic_spacing() -> None:
    ref = np.zeros((12, 14, 16), dtype=np.uint8)
    ref[3:9, 4:10, 5:12] = 1
    ref[0:2, 0:3, 13:16] = 2  # touches the image border: boundary includes the border faces
    pred = np.zeros_like(ref)
    pred[4:9, 4:11, 6:12] = 1
    pred[0:2, 0:4, 12:16] = 2
    spacing = (3.0, 1.0, 0.5)
    m = case_metrics(pred, ref, [1, 2], spacing=spacing, nsd_tolerance_mm=1.0)
    for label in (1, 2):
        expected = _brute_force(pred == label, ref == label, spacing, 1.0)
        got = m[str(label)]
        assert (got["HD95"], got["ASSD"], got["NSD"]) == tuple(map(_approx, expected)), label
        assert 0 < got["NSD"] < 1
    assert m["1"]["VolumeRef_mm3"] == pytest.approx(6 * 6 * 7 * 1.5)
    # Cropping to the masks changes nothing: MONAI on the full volumes agrees.
    from monai.metrics import compute_hausdorff_distance

    full = compute_hausdorff_distance(
        (pred == 1)[None, None].astype(np.float32), (ref == 1)[None, None].astype(np.float32),
        include_background=True, percentile=95, spacing=list(spacing))
    assert m["1"]["HD95"] == _approx(float(full.item()))
    same = case_metrics(ref, ref, [1, 2], spacing=spacing)
    assert same["1"]["HD95"] == 0.0 and same["2"]["NSD"] == 1.0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated argument
def test_3d_anisotropic_hand_computed_with_a_miss_and_an_empty_reference() -> None:
    # 4x5x6 voxels of 3 x 1 x 0.5 mm. Class 1: one reference voxel at (1, 1, 1), one predicted
    # at (2, 1, 3): 1 voxel (3 mm) and 2 voxels (1 mm) apart -> every boundary distance is
    # sqrt(3^2 + 1^2). Class 2 is missed, class 3 predicted where the reference has none:
    # both score the diagonal sqrt(12^2 + 5^2 + 3^2).
    ref = np.zeros((4, 5, 6), dtype=np.uint8)
    ref[1, 1, 1] = 1
    ref[3, 4, 5] = 2
    pred = np.zeros_like(ref)
    pred[2, 1, 3] = 1
    pred[0, 4, 0] = 3
    spacing = (3.0, 1.0, 0.5)
    m = case_metrics(pred, ref, [1, 2, 3], spacing=spacing, nsd_tolerance_mm=3.2)
    assert m["1"]["HD95"] == _approx(math.sqrt(10)) and m["1"]["ASSD"] == _approx(math.sqrt(10))
    assert m["1"]["NSD"] == 1.0 and m["1"]["Dice"] == 0.0 and m["1"]["IoU"] == 0.0
    assert m["1"]["VolumeRef_mm3"] == m["1"]["VolumePred_mm3"] == 1.5
    assert m["1"]["VolumeDifference"] == 0.0
    assert case_metrics(pred, ref, [1], spacing=spacing)["1"]["NSD"] == 0.0  # 1 mm tolerance
    diagonal = math.sqrt(12.0**2 + 5.0**2 + 3.0**2)
    for label in ("2", "3"):
        assert m[label]["HD95"] == m[label]["ASSD"] == pytest.approx(diagonal), label
        assert m[label]["Dice"] == m[label]["NSD"] == 0.0, label
    assert m["2"]["VolumeDifference"] == -1.0 and math.isnan(m["3"]["VolumeDifference"])
    assert m["3"]["VolumePred_mm3"] == 1.5 and m["3"]["FP"] == 1


def test_spacing_and_tolerance_are_checked() -> None:
    pred, ref = _squares()
    for spacing in ((1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, math.nan), "ab"):
        with pytest.raises(LdsegError, match="spacing"):
            case_metrics(pred, ref, [1], spacing=spacing)
    assert case_metrics(pred, ref, [1], spacing=2.0)["1"]["HD95"] == _approx(4.0)  # isotropic
    with pytest.raises(LdsegError, match="2D or 3D"):
        case_metrics(np.ones(5), np.ones(5), [1])
    for tolerance in (-1.0, math.inf, math.nan):
        with pytest.raises(LdsegError, match="tolerance"):
            case_metrics(pred, ref, [1], nsd_tolerance_mm=tolerance)


def test_summary_csv_rows_and_spacing_from_geometry(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))
    ref = np.zeros((3, 4, 5), dtype=np.uint8)
    ref[1, 1:3, 1:4] = 1
    pred = ref.copy()
    pred[0, 0, 0] = 2  # class 2 predicted where no reference has it
    write_image(ref_dir / "a.nii.gz", ref, geometry)
    write_image(pred_dir / "a.nii.gz", pred, geometry)
    write_image(ref_dir / "b.nii.gz", np.zeros_like(ref), geometry)  # both classes absent
    write_image(pred_dir / "b.nii.gz", np.zeros_like(ref), geometry)

    summary = evaluate_folders(pred_dir, ref_dir, labels=[1, 2], class_names={1: "liver"},
                               nsd_tolerance_mm=2.0)
    assert summary["nsd_tolerance_mm"] == 2.0
    a = summary["metric_per_case"][0]["metrics"]
    assert a["1"]["HD95"] == 0.0 and a["1"]["NSD"] == 1.0 and a["1"]["VolumeRef_mm3"] == 12.0
    assert a["2"]["HD95"] == pytest.approx(math.sqrt(6.0**2 + 4.0**2 + 5.0**2))  # mm diagonal
    assert summary["mean"]["2"]["HD95"] == a["2"]["HD95"]  # case b (NaN) left out

    path = pred_dir / "summary.csv"
    assert csv_path_for(pred_dir / "summary.json") == path
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("mean", "1"), ("mean", "2"),
        ("foreground_mean", ""),
    ]
    assert set(METRIC_KEYS) <= set(rows[0]) and rows[0]["class_name"] == "liver"
    assert rows[0]["reference_file"] == str(ref_dir / "a.nii.gz")
    assert float(rows[1]["HD95"]) == a["2"]["HD95"] and rows[1]["NSD"] == "0.0"
    assert rows[2]["HD95"] == "NaN" and rows[2]["Dice"] == "NaN" and rows[2]["TP"] == "0"
    assert float(rows[5]["VolumePred_mm3"]) == pytest.approx(1.0)  # mean of 2 and 0
    assert float(rows[6]["Dice"]) == pytest.approx(summary["foreground_mean"]["Dice"])
    assert sorted(p.name for p in pred_dir.iterdir() if p.name.startswith(".")) == []

    out = tmp_path / "eval" / "scores.json"
    evaluate_folders(pred_dir, ref_dir, output_file=out)
    assert (tmp_path / "eval" / "scores.csv").is_file()
    with pytest.raises(LdsegError, match="tolerance"):
        evaluate_folders(pred_dir, ref_dir, nsd_tolerance_mm=-1)

    table = format_table(summary)
    assert "HD95" in table and "NSD" in table and "within 2 mm" in table
    assert f"{a['2']['HD95']:.2f}" in table


def test_summary_without_surface_metrics_still_summarises() -> None:
    # An nnU-Net summary has only its own keys: they are averaged, the rest left out.
    pred, ref = _pair()
    old = {k: {m: v for m, v in entry.items() if m in METRIC_KEYS[:8]}
           for k, entry in case_metrics(pred, ref, [1, 2]).items()}
    summary = summarize([old], [1, 2], None)
    assert set(summary["mean"]["1"]) == set(METRIC_KEYS[:8])
    assert "n/a" in format_table(summary)
