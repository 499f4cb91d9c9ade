"""Tests for `ldseg.evaluation.metrics`: hand-computed scores, nnU-Net's NaN rules, folders."""

from __future__ import annotations

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
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean", "class_names"}
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
