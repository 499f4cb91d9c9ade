"""Tests for `ldseg.evaluation.uncertainty`: ECE, uncertainty-error overlap and GED on
hand-computed cases, and the invariants that make them trustworthy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ldseg.errors import LdsegError
from ldseg.evaluation.uncertainty import (
    expected_calibration_error,
    generalized_energy_distance,
    sample_disagreement,
    uncertainty_error_overlap,
)


def _two_class(p1: list[float], shape=(2, 4)) -> np.ndarray:
    p = np.array(p1, dtype=np.float64).reshape(shape)
    return np.stack([1 - p, p])


def test_ece_hand_computed() -> None:
    # Class 1 probabilities 0.1 (x4) and 0.7 (x4); with 10 bins they fall in bins 1 and 7.
    # Bin 1: confidence 0.1, 1 of 4 voxels is class 1 -> |0.25 - 0.1| = 0.15, weight 1/2.
    # Bin 7: confidence 0.7, 3 of 4 -> |0.75 - 0.7| = 0.05, weight 1/2. ECE = 0.1.
    probs = _two_class([0.1, 0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7])
    ref = np.array([[0, 0, 0, 1], [1, 1, 0, 1]])
    assert expected_calibration_error(probs, ref, 1, bins=10) == pytest.approx(0.1)
    # Class 0 one-vs-rest: confidences 0.9 and 0.3, accuracies 3/4 and 1/4: the same gaps.
    assert expected_calibration_error(probs, ref, 0, bins=10) == pytest.approx(0.1)
    # One bin: |mean probability - frequency| = |0.4 - 0.5|.
    assert expected_calibration_error(probs, ref, 1, bins=1) == pytest.approx(0.1)
    # 15 bins (default) put 0.1 and 0.7 in separate bins too: same value.
    assert expected_calibration_error(probs, ref, 1) == pytest.approx(0.1)


def test_ece_bin_edges_and_perfect_calibration() -> None:
    # Probability exactly 1 belongs to the last bin; half of those voxels are wrong.
    probs = _two_class([1.0, 1.0, 0.0, 0.0], shape=(4,))
    assert expected_calibration_error(probs, np.array([1, 0, 0, 0]), 1, bins=4) == 0.25
    # 0.5 everywhere with half the voxels in the class: perfectly calibrated.
    half = _two_class([0.5] * 8)
    assert expected_calibration_error(half, np.array([[1, 0] * 2, [0, 1] * 2]), 1) == 0.0
    # Confident and right everywhere: 0.
    sure = _two_class([1.0, 0.0, 1.0, 0.0] * 2)
    assert expected_calibration_error(sure, np.array([[1, 0, 1, 0]] * 2), 1) == 0.0


def test_ece_errors() -> None:
    probs = _two_class([0.5] * 8)
    with pytest.raises(LdsegError, match="class 2"):
        expected_calibration_error(probs, np.zeros((2, 4)), 2)
    with pytest.raises(LdsegError, match="shape"):
        expected_calibration_error(probs, np.zeros((4, 2)), 1)
    with pytest.raises(LdsegError, match="bins"):
        expected_calibration_error(probs, np.zeros((2, 4)), 1, bins=0)


def test_uncertainty_error_overlap_hand_computed() -> None:
    u = np.array([[0.9, 0.6], [0.2, 0.0]])
    pred = np.array([[1, 1], [0, 0]])
    ref = np.array([[0, 1], [1, 0]])  # errors at 0.9 and 0.2
    # Thresholds (map = u >= t): 0.9 -> 2*1/(1+2) = 2/3; 0.6 -> 2/(2+2) = 1/2;
    # 0.2 -> 2*2/(3+2) = 4/5; 0.0 -> 4/6. Fixed 0.5 flags {0.9, 0.6}: 1/2.
    r = uncertainty_error_overlap(u, pred, ref)
    assert r == {"best": pytest.approx(0.8), "best_threshold": 0.2,
                 "fixed": pytest.approx(0.5), "fixed_threshold": 0.5}
    assert uncertainty_error_overlap(u, pred, ref, 0.6)["fixed"] == pytest.approx(0.5)
    assert uncertainty_error_overlap(u, pred, ref, 0.95)["fixed"] == 0.0  # nothing flagged
    assert uncertainty_error_overlap(u, pred, ref, 0.0)["fixed"] == pytest.approx(2 / 3)
    # Entropy in nats, divided by log(3): the same map on the normalised scale.
    entropy = uncertainty_error_overlap(u * math.log(3), pred, ref, max_value=math.log(3))
    assert entropy["best"] == pytest.approx(0.8)
    assert entropy["best_threshold"] == pytest.approx(0.2)


def test_uncertainty_error_overlap_ties_perfect_and_no_errors() -> None:
    pred = np.array([1, 1, 0, 0, 0])
    ref = np.array([0, 0, 0, 0, 0])  # errors at the first two voxels
    u = np.array([0.7, 0.7, 0.3, 0.3, 0.0])
    r = uncertainty_error_overlap(u, pred, ref)
    assert r["best"] == 1.0 and r["best_threshold"] == 0.7 and r["fixed"] == 1.0
    # Tied best Dice: the highest threshold (the smallest map) is reported.
    flat = uncertainty_error_overlap(np.full(5, 0.4), pred, ref)
    assert flat["best_threshold"] == 0.4 and flat["best"] == pytest.approx(4 / 7)
    none = uncertainty_error_overlap(u, ref, ref)
    assert math.isnan(none["best"]) and math.isnan(none["fixed"])
    assert math.isnan(none["best_threshold"]) and none["fixed_threshold"] == 0.5


def test_uncertainty_error_overlap_best_is_the_maximum_over_thresholds() -> None:
    rng = np.random.default_rng(0)
    u = rng.random((6, 7)).round(1)
    pred, ref = rng.integers(0, 3, (2, 6, 7))
    r = uncertainty_error_overlap(u, pred, ref)
    error = pred != ref
    brute = [(2 * (error & (u >= t)).sum() / ((u >= t).sum() + error.sum()), t)
             for t in np.unique(u)]
    assert r["best"] == pytest.approx(max(d for d, _ in brute))
    assert r["best"] >= r["fixed"]


def test_uncertainty_error_overlap_refuses_unnormalised_maps() -> None:
    u = np.array([0.0, 1.05])  # e.g. entropy of 3 classes in nats, not divided by log 3
    with pytest.raises(LdsegError, match=r"outside \[0, 1\]"):
        uncertainty_error_overlap(u, np.array([0, 1]), np.array([0, 0]))
    with pytest.raises(LdsegError, match="shape"):
        uncertainty_error_overlap(u, np.array([0, 1, 1]), np.array([0, 0, 0]))


def test_ged_hand_computed() -> None:
    ref = np.array([[1, 1, 0, 0]])
    same, half, off = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]), np.array([[0, 0, 1, 1]])
    # d(s, y): 0, 1/2 (IoU 1/2), 1 -> mean 1/2. Pairs: d(same, half) = 1/2, d(same, off) = 1,
    # d(half, off) = 1 -> mean 5/6. GED^2 = 2 * 1/2 - 5/6 = 1/6.
    samples = np.stack([same, half, off])
    assert generalized_energy_distance(samples, ref, 2) == pytest.approx(1 / 6)
    # Identical samples: no spread, GED^2 = 2 d(s, y).
    assert generalized_energy_distance(np.stack([half, half]), ref, 2) == pytest.approx(1.0)
    assert generalized_energy_distance(same[None], ref, 2) == 0.0  # one perfect sample
    # Empty vs empty is distance 0.
    empty = np.zeros_like(ref)
    assert generalized_energy_distance(np.stack([empty, empty]), empty, 2) == 0.0


def test_ged_multi_class_means_over_foreground_classes() -> None:
    ref = np.array([1, 1, 2, 2])
    sample = np.array([1, 2, 2, 2])
    # Class 1: IoU 1/2 -> 1/2; class 2: IoU 2/3 -> 1/3; d = 5/12; GED^2 = 2 d = 5/6.
    assert generalized_energy_distance(sample[None], ref, 3) == pytest.approx(5 / 6)
    # A fourth class absent from both maps counts 0 and is averaged in.
    assert generalized_energy_distance(sample[None], ref, 4) == pytest.approx(5 / 9)
    # Background is excluded: class 1 d = 1/2, class 2 d = 1 -> GED^2 = 2 * 3/4 (with the
    # background's d = 0 averaged in it would be 2 * 1/2).
    assert generalized_energy_distance(np.array([[0, 0, 1, 1]]), np.array([0, 0, 1, 2]),
                                       3) == pytest.approx(1.5)


def test_ged_is_the_mean_of_per_class_geds_and_non_negative() -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 4, (5, 6, 7))
    ref = rng.integers(0, 4, (6, 7))
    ged = generalized_energy_distance(samples, ref, 4)
    per_class = [generalized_energy_distance((samples == c).astype(int), (ref == c).astype(int),
                                             2) for c in (1, 2, 3)]
    assert ged == pytest.approx(np.mean(per_class)) and ged >= 0


def test_ged_errors() -> None:
    ref = np.zeros((2, 2), int)
    with pytest.raises(LdsegError, match="outside 0..1"):
        generalized_energy_distance(np.full((1, 2, 2), 2), ref, 2)
    with pytest.raises(LdsegError, match=r"\(N, \*spatial\)"):
        generalized_energy_distance(ref, ref, 2)
    with pytest.raises(LdsegError, match="foreground"):
        generalized_energy_distance(ref[None], ref, 1)


def test_sample_disagreement() -> None:
    samples = np.array([[0, 1, 2], [0, 1, 1], [0, 2, 1], [1, 2, 1]])
    labels = np.array([0, 1, 0])
    assert sample_disagreement(samples, labels).tolist() == [0.25, 0.5, 1.0]
    assert sample_disagreement(samples, labels).dtype == np.float32


# --- predict writes the outputs, evaluate scores them ----------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated argument
def test_predict_outputs_in_input_geometry_and_evaluate_scores_them(tmp_path) -> None:
    import csv

    import SimpleITK as sitk
    from conftest import save_sitk
    from test_inference import ROT, make_run

    from ldseg.data.imageio import read_image, write_image
    from ldseg.evaluation.metrics import evaluate_folders, format_table
    from ldseg.evaluation.uncertainty import read_probabilities
    from ldseg.inference.predictor import copy_run_config, predict_folder

    run = make_run(tmp_path, 3, 3, (16, 16, 16), classes=3)
    inp = tmp_path / "in"
    vol = np.random.default_rng(0).normal(size=(9, 13, 11)).astype(np.int16)
    spacing, origin = (0.7, 1.3, 2.9), (-12.5, 40.0, 3.25)
    save_sitk(inp / "caseA_0000.nii.gz", vol, spacing, origin, ROT)
    out = tmp_path / "out"
    predict_folder(run, inp, out, steps=2, samples=3, progress_bar=False, pictures=False,
                   save_probabilities=True, save_samples=True)
    copy_run_config(run, out)

    files = [out / "disagreement" / "caseA.nii.gz",
             *(out / "samples" / "caseA" / f"sample_{i:03d}.nii.gz" for i in range(3))]
    assert sorted((out / "samples" / "caseA").iterdir()) == files[1:]
    for path in files:
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == (11, 13, 9)
        assert image.GetSpacing() == pytest.approx(spacing)
        assert image.GetOrigin() == pytest.approx(origin)
        assert image.GetDirection() == pytest.approx(ROT)
    labels = read_image(out / "caseA.nii.gz")[0][0]
    samples = np.stack([read_image(f)[0][0] for f in files[1:]])
    disagreement = read_image(files[0])[0][0]
    assert np.array_equal(disagreement, sample_disagreement(samples, labels))
    assert np.allclose(disagreement * 3, np.round(disagreement * 3), atol=1e-5)  # k of 3

    probs, names, geometry = read_probabilities(out / "probabilities" / "caseA.npz")
    assert probs.shape == (3, 9, 13, 11) and names == ["c0", "c1", "c2"]
    assert np.allclose(probs.sum(0), 1, atol=3e-3)  # stored as float16
    assert (probs.argmax(0) == labels).mean() > 0.99
    assert geometry.spacing == pytest.approx(spacing[::-1])  # array-axis order
    assert geometry.direction == pytest.approx(ROT)

    # A reference: the prediction with some voxels changed, so that there are errors.
    ref = labels.copy()
    ref[2:5, 3:9, 2:8] = 1
    write_image(tmp_path / "ref" / "caseA.nii.gz", ref, geometry)
    summary = evaluate_folders(out, tmp_path / "ref", labels=[1, 2])
    entry = summary["metric_per_case"][0]
    entropy = read_image(out / "uncertainty" / "caseA.nii.gz")[0][0]
    ueo = uncertainty_error_overlap(np.minimum(entropy, math.log(3)), labels, ref,
                                    max_value=math.log(3))
    assert entry["uncertainty"] == {
        "UEO": pytest.approx(ueo["best"]), "UEO_threshold": pytest.approx(ueo["best_threshold"]),
        "UEO_fixed": pytest.approx(ueo["fixed"]),
        "GED": pytest.approx(generalized_energy_distance(samples, ref, 3))}
    for c in (1, 2):
        assert entry["metrics"][str(c)]["ECE"] == pytest.approx(
            expected_calibration_error(probs, ref, c))
    assert summary["uncertainty_mean"] == entry["uncertainty"]  # one case
    assert summary["foreground_mean"]["ECE"] == pytest.approx(
        np.mean([entry["metrics"][c]["ECE"] for c in ("1", "2")]))
    assert summary["ece_bins"] == 15 and summary["ueo_fixed_threshold"] == 0.5

    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"ECE", "UEO", "UEO_threshold", "UEO_fixed", "GED"} <= set(rows[0])
    assert float(rows[0]["GED"]) == pytest.approx(entry["uncertainty"]["GED"])
    assert float(rows[-1]["ECE"]) == pytest.approx(summary["foreground_mean"]["ECE"])
    table = format_table(summary)
    assert "UEO@t" in table and "GED" in table and "ECE" in table
    assert f"{entry['uncertainty']['GED']:.4f}" in table


def test_evaluate_without_uncertainty_outputs_adds_nothing(tmp_path) -> None:
    from ldseg.data.imageio import write_image
    from ldseg.evaluation.metrics import evaluate_folders

    ref = np.zeros((6, 6), np.uint8)
    ref[1:4, 1:4] = 1
    write_image(tmp_path / "ref" / "a.png", ref)
    write_image(tmp_path / "pred" / "a.png", ref)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert "uncertainty_mean" not in summary and "ECE" not in summary["mean"]["1"]
    assert "uncertainty" not in summary["metric_per_case"][0]


def test_score_case_uncertainty_reads_the_prediction_folder_layout(tmp_path) -> None:
    from ldseg.data.imageio import Geometry, write_image
    from ldseg.evaluation.uncertainty import score_case_uncertainty, write_probabilities

    ref = np.array([[0, 1, 1, 2]] * 3, np.uint8)
    pred = np.array([[0, 1, 2, 2]] * 3, np.uint8)  # errors in column 2
    entropy = np.array([[0.0, 0.1, 0.9, 0.3]] * 3, np.float32)
    write_image(tmp_path / "uncertainty" / "a.tif", entropy)  # 2D float maps are .tif
    samples = np.stack([pred, ref])
    for i, sample in enumerate(samples):
        write_image(tmp_path / "samples" / "a" / f"sample_{i:03d}.png", sample)
    # Without probabilities or model_config.json, K is the largest label + 1 = 3.
    ece, scores = score_case_uncertainty(tmp_path, "a", ".png", pred, ref)
    expected = uncertainty_error_overlap(entropy, pred, ref, max_value=math.log(3))
    assert ece == {} and scores["UEO"] == 1.0 == expected["best"]
    assert scores["UEO_threshold"] == pytest.approx(expected["best_threshold"])
    assert scores["UEO_fixed"] == 1.0  # 0.9 / log 3 = 0.82 >= 0.5; 0.3 / log 3 = 0.27 < 0.5
    assert scores["GED"] == pytest.approx(generalized_energy_distance(samples, ref, 3))
    assert score_case_uncertainty(tmp_path, "b", ".png", pred, ref) == ({}, {})

    # With probabilities K comes from them (here 4: log 4 scales the entropy) and ECE appears.
    probs = np.stack([(pred == c).astype(np.float32) for c in range(4)])
    write_probabilities(tmp_path / "probabilities" / "a.npz", probs, "wxyz",
                        Geometry.identity(2))
    ece, scores = score_case_uncertainty(tmp_path, "a", ".png", pred, ref, ueo_threshold=0.6)
    assert set(ece) == {1, 2, 3} and ece[3] == 0.0
    assert ece[1] == pytest.approx(expected_calibration_error(probs, ref, 1))
    assert scores["UEO_fixed"] == pytest.approx(
        uncertainty_error_overlap(entropy, pred, ref, 0.6, max_value=math.log(4))["fixed"])
    write_image(tmp_path / "samples" / "c" / "sample_000.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(LdsegError, match=r"sample_000\.png: shape"):
        score_case_uncertainty(tmp_path, "c", ".png", pred, ref)
