"""benchmarks/speed.py over several rounds: the median round, the worst peak, the range shown;
and each scenario on the malloc the `ldseg` command would give it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
speed = pytest.importorskip("speed")


def test_combine_rounds_takes_the_median_round_and_the_worst_peak():
    rounds = [{"seconds_per_image": 0.52, "peak_rss_gb": 0.53, "achieved_gflops": 100.0},
              {"seconds_per_image": 0.43, "peak_rss_gb": 0.55, "achieved_gflops": 125.0},
              {"seconds_per_image": 0.47, "peak_rss_gb": 0.52, "achieved_gflops": 114.0}]
    out = speed.combine_rounds(rounds)
    assert out["seconds_per_image"] == 0.47 and out["achieved_gflops"] == 114.0  # one round's
    assert out["peak_rss_gb"] == 0.55  # memory: the worst round, not the median one
    assert out["round_seconds"] == [0.52, 0.43, 0.47]
    # Training rows time steps; an even count takes the lower middle round.
    steps = speed.combine_rounds([{"seconds_per_step": 7.5, "peak_rss_gb": 2.3},
                                  {"seconds_per_step": 6.8, "peak_rss_gb": 2.4}])
    assert steps["seconds_per_step"] == 6.8 and steps["peak_rss_gb"] == 2.4
    ceilings = speed.combine_rounds([{"conv_gflops": 180.0, "malloc": "glibc malloc"},
                                     {"conv_gflops": 220.0, "malloc": "glibc malloc"},
                                     {"conv_gflops": 200.0, "malloc": "glibc malloc"}])
    assert ceilings == {"conv_gflops": 200.0, "malloc": "glibc malloc"}
    single = {"seconds_per_image": 1.0, "peak_rss_gb": 1.0}
    assert speed.combine_rounds([single]) is single  # one round: as it was measured
    failed = speed.combine_rounds([single, {"error": "killed"}])
    assert failed == {"error": "killed"}  # a failed round is never hidden by a good one


def test_report_shows_the_range_over_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "RESULTS", tmp_path / "speed.md")
    results = {"ceiling": {"matmul_gflops": 150.0, "conv_gflops": 200.0},
               "infer2d_512": speed.combine_rounds(
                   [{"seconds_per_image": s, "peak_rss_gb": 0.5, "gflop_per_image": 53.6,
                     "achieved_gflops": 53.6 / s} for s in (0.52, 0.43, 0.47)])}
    speed.write_report(results, threads=2, repeats=3, rounds=3)
    text = (tmp_path / "speed.md").read_text()
    assert "| infer2d_512 | 0.470 s/image (0.430-0.520) | 0.50 |" in text
    assert "ran in 3 rounds" in text


def test_each_scenario_runs_on_the_malloc_its_command_would_choose(monkeypatch):
    from ldseg import allocator

    monkeypatch.setattr(allocator, "find_fast_malloc", lambda: "libtcmalloc_minimal.so.4")
    preload = {name: speed.scenario_env(name).get("LD_PRELOAD") for name in (
        "train2d_512", "infer2d_512", "infer2d_256", "infer3d_ref", "infer3d_ref_glibc",
        "infer2d_512_glibc", "ceiling")}
    assert preload == {"train2d_512": "libtcmalloc_minimal.so.4",
                       "infer2d_512": "libtcmalloc_minimal.so.4",  # 32 MB activations
                       "infer2d_256": "libtcmalloc_minimal.so.4",
                       "infer3d_ref": "libtcmalloc_minimal.so.4",  # 512 MB activations
                       "infer3d_ref_glibc": None,
                       "infer2d_512_glibc": None, "ceiling": None}
