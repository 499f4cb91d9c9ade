"""`ldseg demo` end to end on a tiny budget: every promised output is there."""

from __future__ import annotations

import json

import pytest

from ldseg.demo import run_demo
from ldseg.errors import LdsegError


def test_demo_writes_everything_it_promises(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(out, minutes=0.05, num_train=4, num_test=2, progress_bar=False)
    text = capsys.readouterr().out
    assert "Otsu" in text and "foreground Dice" in text
    assert 0 <= result["dice"] <= 1 and result["otsu_dice"] < 0.7
    for path in ("run/model_best.safetensors", "run/curves.png", "run/log.csv",
                 "predictions/summary.json", "dataset/dataset.json"):
        assert (out / path).is_file(), path
    cases = sorted(p.name for p in (out / "dataset" / "labelsTs").iterdir())
    assert sorted(p.name for p in (out / "predictions").glob("*.png")) == cases
    assert len(list((out / "predictions" / "uncertainty").glob("*.tif"))) == 2
    assert len(list((out / "predictions" / "pictures").glob("*.png"))) == 2
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    with pytest.raises(LdsegError, match="not empty"):
        run_demo(out, minutes=0.05)
