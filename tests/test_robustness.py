"""`ldseg robustness` end to end on a tiny model: files, rows, means, the noise protocol."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from conftest import easy_dataset
from PIL import Image
from test_inference import make_run

from ldseg.cli import main
from ldseg.data.dataset import load_case, load_dataset_spec
from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import case_metrics
from ldseg.evaluation.robustness import (
    CSV_COLUMNS,
    case_noise,
    model_names,
    noisy_image,
    parse_sigmas,
    run_robustness,
    scale_to_unit,
    select_cases,
)
from ldseg.inference.predictor import Segmenter
from ldseg.training.checkpoint import save_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    ds = easy_dataset(root / "ds", n=2, size=32, n_test=2)
    runs = [make_run(root / "a", 2, 2, (32, 32)), make_run(root / "b", 2, 2, (32, 32))]
    return ds, runs


def test_end_to_end_files_rows_and_means(setup, tmp_path):
    ds, runs = setup
    out = tmp_path / "out"
    result = run_robustness(runs, ds, out, sigmas=[0.0, 0.1], steps=2, progress_bar=False)
    names = ["a/run", "b/run"]  # both folders are called "run": the parent tells them apart
    assert list(result["models"]) == names and result["cases"] == ["c02", "c03"]
    assert "test case" in result["note"]

    with (out / "robustness.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    # 2 models x 2 sigmas x (2 cases x 2 classes + a mean row)
    assert len(rows) == 20
    assert {(r["case"], r["class"]) for r in rows} == {
        ("c02", "disc"), ("c02", "square"), ("c03", "disc"), ("c03", "square"),
        ("mean", "foreground")}
    for name in names:
        for sigma in ("0.0", "0.1"):
            mine = [r for r in rows if r["model"] == name and r["sigma"] == sigma]
            per_class = [np.nanmean([float(r["dice"]) for r in mine if r["class"] == c])
                         for c in ("disc", "square")]
            mean = next(r for r in mine if r["case"] == "mean")
            assert float(mean["dice"]) == pytest.approx(np.mean(per_class))
    # Same weights and the same noise: identical curves.
    a, b = (result["models"][n] for n in names)
    assert a["dice"] == b["dice"] and a["hd95"] == b["hd95"]
    assert set(a["per_class"]) == {"disc", "square"} and len(a["dice"]) == 2

    saved = json.loads((out / "robustness.json").read_text())
    assert saved["sigmas"] == [0.0, 0.1] and saved["rows"] == json.loads(json.dumps(
        result["rows"]))
    with Image.open(out / "robustness.png") as png:
        assert png.format == "PNG" and png.width > 400
    assert not list(out.glob(".*")), "temporary files left behind"

    # Sigma 0 is the [0, 1]-scaled image, segmented and scored as `ldseg evaluate` would.
    spec = load_dataset_spec(ds)
    case = select_cases(spec)[0][0]
    image, label, geometry = load_case(case, spec)
    seg = Segmenter.load(runs[0]).segment_array(scale_to_unit(image), geometry, steps=2)
    expected = case_metrics(seg.labels, label, [1, 2], spacing=geometry.spacing)
    first = [r for r in result["rows"] if r["model"] == "a/run" and r["sigma"] == 0.0
             and r["case"] == case.name]
    assert [r["dice"] for r in first] == [expected["1"]["Dice"], expected["2"]["Dice"]]
    assert [r["hd95"] for r in first] == [expected["1"]["HD95"], expected["2"]["HD95"]]

    again = run_robustness(runs[:1], ds, tmp_path / "again", sigmas=[0.0, 0.1], steps=2,
                           progress_bar=False)
    assert again["models"]["run"]["dice"] == a["dice"]  # fixed seed: reproducible


def test_noise_protocol():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(100, 20, (16, 12)), rng.normal(-5, 1, (16, 12))]).astype("f4")
    unit = scale_to_unit(image)
    for channel in unit:
        assert channel.min() == 0.0 and channel.max() == pytest.approx(1.0)
    noise = case_noise(image, "case1", 0)
    assert noise.shape == image.shape and abs(float(noise.std()) - 1) < 0.1
    assert np.array_equal(noise, case_noise(image, "case1", 0))
    assert not np.array_equal(noise, case_noise(image, "case2", 0))
    assert not np.array_equal(noise, case_noise(image, "case1", 1))
    assert np.allclose(noisy_image(unit, noise, 0.0), unit, atol=1e-6)
    noisy = noisy_image(unit, noise, 0.1)
    assert noisy.min() == 0.0 and noisy.max() == pytest.approx(1.0)
    # Before re-scaling the added noise has the requested standard deviation.
    assert float(((unit + 0.1 * noise) - unit).std()) == pytest.approx(0.1, rel=0.1)
    assert not scale_to_unit(np.full((1, 3, 3), 7.0)).any()  # constant channel -> 0


def test_parse_sigmas():
    sigmas = parse_sigmas("0:0.2:0.02")
    assert len(sigmas) == 11 and sigmas[0] == 0.0 and sigmas[-1] == 0.2 and sigmas[3] == 0.06
    assert parse_sigmas("0, 0.05,0.1") == [0.0, 0.05, 0.1]
    assert parse_sigmas("0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    for bad in ("0:0.2", "a,b", "-0.1", "0:0.2:0", "0.2:0:0.1", ""):
        with pytest.raises(LdsegError, match="sigmas"):
            parse_sigmas(bad)


def test_case_selection_and_model_names(tmp_path, setup):
    ds = easy_dataset(tmp_path / "train_only", n=3, size=32)
    spec = load_dataset_spec(ds)
    cases, note = select_cases(spec)
    assert [c.name for c in cases] == ["c00", "c01", "c02"] and "training cases" in note
    assert [c.name for c in select_cases(spec, ["c01"])[0]] == ["c01"]
    with pytest.raises(LdsegError, match="no labelled case named c09"):
        select_cases(spec, ["c09"])
    with_test = load_dataset_spec(setup[0])
    assert [c.name for c in select_cases(with_test, ["c00", "c03"])[0]] == ["c00", "c03"]
    (tmp_path / "x").mkdir()
    assert model_names([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_cli_and_errors(setup, tmp_path, capsys):
    ds, runs = setup
    out = tmp_path / "cli"
    code = main(["robustness", "-m", str(runs[0]), "-m", str(runs[1]), "-d", str(ds),
                 "--sigmas", "0,0.2", "--steps", "1", "--cases", "c03", "-o", str(out),
                 "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "mean foreground Dice" in text and "a/run" in text
    assert {p.name for p in out.iterdir()} == {"robustness.json", "robustness.csv",
                                              "robustness.png"}
    assert json.loads((out / "robustness.json").read_text())["cases"] == ["c03"]

    code = main(["robustness", "-m", str(runs[0]), "-d", str(ds), "--sigmas", "0:1",
                 "-o", str(tmp_path / "bad")])
    assert code == 1 and "--sigmas" in capsys.readouterr().err
    code = main(["robustness", "-m", str(runs[0]), "-d", str(ds), "--keep-largest", "all",
                 "--keep-fraction", "1.5", "-o", str(tmp_path / "bad2")])
    assert code == 1 and "--keep-fraction" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()
    code = main(["robustness", "-m", str(runs[0]), "-d", str(ds), "--sigmas", "0",
                 "--steps", "1", "--cases", "c03", "--keep-largest", "c1",
                 "--keep-fraction", "0.4", "-o", str(tmp_path / "pp"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "pp" / "robustness.json").read_text())
    assert code == 0 and saved["keep_largest"] == "c1" and saved["keep_fraction"] == 0.4
    four = make_run(tmp_path / "four", 2, 2, (32, 32), classes=4)
    with pytest.raises(LdsegError, match="4 classes.*declares 3"):
        run_robustness([four], ds, tmp_path / "x", sigmas=[0.0], steps=1, progress_bar=False)
    assert math.isfinite(parse_sigmas("0")[0])


def test_keep_largest_post_processes_the_labels_it_scores(setup, tmp_path):
    """With --keep-largest the scores are those of the post-processed labels, per model."""
    from ldseg.data.dataset import load_case, load_dataset_spec
    from ldseg.evaluation.metrics import case_metrics
    from ldseg.inference.postprocess import keep_largest_component

    ds, runs = setup
    result = run_robustness(runs[:1], ds, tmp_path / "pp", sigmas=[0.0], steps=2, cases=["c03"],
                            progress_bar=False, keep_largest="all", keep_fraction=0.5)
    assert result["keep_largest"] == "all" and result["keep_fraction"] == 0.5
    spec = load_dataset_spec(ds)
    case = select_cases(spec, ["c03"])[0][0]
    image, label, geometry = load_case(case, spec)
    raw = Segmenter.load(runs[0]).segment_array(scale_to_unit(image), geometry, steps=2)
    kept = keep_largest_component(raw.labels, (1, 2), keep_fraction=0.5)
    assert not np.array_equal(kept, raw.labels)  # this model leaves islands to remove
    expected = case_metrics(kept, label, [1, 2], spacing=geometry.spacing)
    dice = result["models"]["run"]["per_class"]
    assert dice["disc"]["dice"][0] == pytest.approx(expected["1"]["Dice"], nan_ok=True)
    assert dice["square"]["dice"][0] == pytest.approx(expected["2"]["Dice"], nan_ok=True)


def test_steps_default_to_each_runs_own(setup, tmp_path):
    """Without `steps`, every model samples with its own run's steps, as `ldseg predict` does."""
    ds, runs = setup
    seg = Segmenter.load(runs[0])
    one_step = tmp_path / "one" / "run"
    cfg = replace(seg.config, diffusion=replace(seg.config.diffusion, sampling_steps=1))
    save_model(seg.model, cfg, one_step / "model_best.safetensors", {})
    assert seg.config.diffusion.sampling_steps != 1

    own = run_robustness([runs[0], one_step], ds, tmp_path / "own", sigmas=[0.0],
                         progress_bar=False)
    assert own["steps"] is None
    assert [m["steps"] for m in own["models"].values()] == [
        seg.config.diffusion.sampling_steps, 1]
    given = run_robustness([one_step], ds, tmp_path / "given", sigmas=[0.0], steps=1,
                           progress_bar=False)
    forced = run_robustness([one_step], ds, tmp_path / "forced", sigmas=[0.0],
                            steps=seg.config.diffusion.sampling_steps, progress_bar=False)
    assert own["models"]["one/run"]["dice"] == given["models"]["run"]["dice"]
    first = own["models"]["a/run"]["dice"]
    assert first == run_robustness([runs[0]], ds, tmp_path / "a", sigmas=[0.0],
                                   progress_bar=False)["models"]["run"]["dice"]
    # The weights are the same, so only the steps can tell the two curves apart.
    assert forced["models"]["run"]["dice"] == first
