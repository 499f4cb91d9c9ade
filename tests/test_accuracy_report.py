"""benchmarks/accuracy.py's report over seeds: means, paired differences and verdicts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
accuracy = pytest.importorskip("accuracy")


def _fake_seed(work: Path, dice: dict[str, float], ece: dict[str, float],
               curves: dict[str, list[float]]) -> None:
    """The files one finished seed leaves for the knee3d task."""
    for folder, d in dice.items():
        summary = {"class_names": {"1": "femur"}, "mean": {"1": {"Dice": d, "HD95": 1.0}},
                   "foreground_mean": {"Dice": d, "ECE": ece.get(folder, math.nan)}}
        out = work / "pred" / "knee3d" / folder
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps(summary))
    rob = work / "robustness" / "knee3d"
    rob.mkdir(parents=True)
    (rob / "robustness.json").write_text(json.dumps(
        {"sigmas": [0.0, 0.1], "models": {m: {"dice": c} for m, c in curves.items()}}))


def test_seeds_report_judges_the_means_and_paired_differences(tmp_path: Path) -> None:
    works = accuracy.seed_works(tmp_path, [0, 1])
    assert works == {0: tmp_path / "seed0", 1: tmp_path / "seed1"}
    assert accuracy.seed_works(tmp_path, [3]) == {3: tmp_path}
    # Seed 0: LDSeg better calibrated; seed 1: worse. Means 0.0150 vs 0.0160: met, 1 of 2.
    _fake_seed(works[0], {"ldseg_s1": 0.90, "ldseg_s8": 0.91, "baseline": 0.92,
                          accuracy.EQUAL_STEPS: 0.88},
               {"ldseg_s8": 0.0120, "baseline": 0.0160, accuracy.EQUAL_STEPS: 0.0250},
               {"ldseg": [0.90, 0.89], "baseline": [0.92, 0.86]})
    _fake_seed(works[1], {"ldseg_s1": 0.92, "ldseg_s8": 0.93, "baseline": 0.92},
               {"ldseg_s8": 0.0180, "baseline": 0.0160},
               {"ldseg": [0.92, 0.91], "baseline": [0.92, 0.88]})
    text = accuracy.seeds_report(works, ["knee3d"], 8)
    rows = [line for line in text.splitlines() if line.startswith("| knee3d |")]
    assert len(rows) == 3  # two seeds and their mean
    assert "| knee3d | mean (sd) of 2 | | 0.910 (0.0141) |" in rows[2]
    # The baseline at LDSeg's steps, where one seed has it: its columns, n/a for the other.
    assert "| ECE baseline at LDSeg's steps |" in text
    assert rows[0].endswith("| 0.880 | 0.0250 |") and rows[1].endswith("| n/a | n/a |")
    target = next(line for line in text.splitlines() if line.startswith("- knee3d"))
    # Dice 0.910 vs 0.920: within 0.01, met. Losses 0.010 vs 0.050: at most half, met.
    assert "Dice (1 sample) 0.910 vs baseline 0.920 (met)" in target
    assert "loss at 0.1 0.010 vs 0.050 (met)" in target
    assert "ECE 0.0150 vs 0.0160 (met)" in target
    # Paired differences -0.0040 and +0.0020: mean -0.0010, sd 0.0042.
    assert "paired difference -0.0010 (sd 0.0042)" in target
    assert "LDSeg lower in 1 of 2 seeds" in target


def test_seeds_report_skips_seeds_without_results(tmp_path: Path) -> None:
    works = accuracy.seed_works(tmp_path, [0, 1])
    _fake_seed(works[0], {"ldseg_s1": 0.95, "ldseg_s8": 0.95, "baseline": 0.95},
               {"ldseg_s8": 0.02, "baseline": 0.01},
               {"ldseg": [0.95, 0.949], "baseline": [0.95, 0.948]})
    text = accuracy.seeds_report(works, ["knee3d"], 8)
    assert "LDSeg's steps" not in text
    target = next(line for line in text.splitlines() if line.startswith("- knee3d"))
    assert target.startswith("- knee3d, 1 seeds:")
    assert "both lose < 0.005" in target and "ECE 0.0200 vs 0.0100 (NOT met)" in target


def test_an_ldseg_only_folder_reports_no_baseline_verdicts(tmp_path: Path) -> None:
    works = accuracy.seed_works(tmp_path, [4, 5])
    for work in works.values():
        _fake_seed(work, {"ldseg_s1": 0.92, "ldseg_s8": 0.93}, {"ldseg_s8": 0.008},
                   {"ldseg": [0.92, 0.915]})
    text = accuracy.seeds_report(works, ["knee3d"], 8)
    rows = [line for line in text.splitlines() if line.startswith("| knee3d |")]
    assert len(rows) == 3 and "| n/a |" in rows[0]
    target = next(line for line in text.splitlines() if line.startswith("- knee3d"))
    assert target == ("- knee3d, 2 seeds: no baseline in this folder; LDSeg Dice (1 sample) "
                      "0.920, loss at 0.1 0.005, ECE 0.0080")
    assert "NOT met" not in text
    single = accuracy.report(works[4], ["knee3d"], 1, 8, None)
    assert "- knee3d: no baseline in this folder" in single and "NOT met" not in single


def test_mean_sd_ignores_missing_values() -> None:
    mean, sd = accuracy.mean_sd([math.nan, 1.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(math.sqrt(2))
    mean, sd = accuracy.mean_sd([0.5])
    assert mean == 0.5 and math.isnan(sd)
    assert all(math.isnan(v) for v in accuracy.mean_sd([math.nan]))


def test_steps_are_each_runs_own_unless_given(tmp_path: Path) -> None:
    """Without --steps the jobs pass none, so every run samples with its planned steps, and the
    report names them per task."""
    for job in (accuracy.task_job(tmp_path, "knee3d", "ldseg", 1.0, 1, None, 8),
                accuracy.robustness_job(tmp_path, "knee3d", "0,0.1", None, 1)):
        assert "--steps" not in job
    assert "--steps 3 " in accuracy.task_job(tmp_path, "knee3d", "ldseg", 1.0, 1, 3, 8)
    assert "--steps 3 " in accuracy.robustness_job(tmp_path, "knee3d", "0,0.1", 3, 1)
    run = tmp_path / "runs" / "knee3d" / "ldseg"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"diffusion": {"sampling_steps": 2}}))
    results = {"knee3d": accuracy.task_results(tmp_path, "knee3d"), "glas": {}}
    assert accuracy._steps_text(None, results) == "each run's own steps (knee3d 2, glas n/a)"
    assert accuracy._steps_text(15, results) == "15 steps"


def test_a_baseline_only_folder_reports_its_grid_and_no_ldseg(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "glas" / "baseline"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preprocess": {"grid": [224, 320]}}))
    results = accuracy.task_results(tmp_path, "glas")
    assert results["grid"] == "224x320" and results["sampling_steps"] is None
    out = tmp_path / "pred" / "glas" / "baseline"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(
        {"class_names": {"1": "gland"}, "mean": {"1": {"Dice": 0.8, "HD95": 80.0}},
         "foreground_mean": {"Dice": 0.8, "ECE": 0.2}}))
    text = accuracy.report(tmp_path, ["glas"], 1, 8, None)
    assert "| glas | baseline U-Net | n/a | 224x320 |" in text
    assert "- glas: no LDSeg in this folder" in text
