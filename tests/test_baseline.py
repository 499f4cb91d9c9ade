"""The deterministic baseline U-Net trains, saves, loads and predicts through LDSeg's pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import save_sitk

from ldseg.cli import main
from ldseg.config import ModelConfig, PreprocessConfig, RunConfig, TrainConfig, load_run_config
from ldseg.data.imageio import read_image
from ldseg.inference.predictor import Segmenter, entropy, predict_folder
from ldseg.model.baseline import BaselineUNet, build_model
from ldseg.training.checkpoint import load_model_file, save_model
from ldseg.training.plan import default_model
from ldseg.training.trainer import train

TINY = ModelConfig(architecture="baseline", baseline_widths=(8, 16, 32))


@pytest.fixture(scope="module")
def trained(easy, tmp_path_factory):
    tc = TrainConfig(batch_size=4, epochs=8, iters_per_epoch=10, val_fraction=0.25, lr=2e-3,
                     warmup_steps=5, seed=0)
    run = tmp_path_factory.mktemp("baseline") / "run"
    state = train(easy, run, progress_bar=False, grid=(48, 48), model=TINY, train=tc)
    return run, state


def test_tiny_baseline_learns(trained):
    run, state = trained
    dice = [row["val_dice"] for row in state.history]
    assert len(dice) == 8
    assert dice[-1] > 0.6, dice
    assert dice[-1] > dice[0] + 0.2, dice
    assert {"ce", "dice_loss"} <= set(state.history[0]) and "noise_mse" not in state.history[0]
    config = load_run_config(run / "config.json")
    assert config.model.architecture == "baseline"
    assert config.preprocess.grid == (48, 48)


def test_predict_writes_labels_in_the_input_geometry(trained, easy, tmp_path):
    run, _ = trained
    out = tmp_path / "pred"
    written = predict_folder(run, easy / "imagesTs", out, samples=4, progress_bar=False)
    assert [p.name for p in written] == ["c12.png", "c13.png", "c14.png"]
    dice = []
    for path in written:
        pred = read_image(path)[0][0]
        ref = read_image(easy / "labelsTs" / path.name)[0][0]
        assert pred.shape == ref.shape == (48, 48)
        assert set(np.unique(pred)) <= {0, 1, 2}
        dice.append(2 * ((pred > 0) & (ref > 0)).sum() / ((pred > 0).sum() + (ref > 0).sum()))
        assert (out / "uncertainty" / path.name.replace(".png", ".tif")).is_file()
    assert np.mean(dice) > 0.6, dice


def test_one_softmax_whatever_the_sample_count(trained, easy):
    run, _ = trained
    seg = Segmenter.load(run)
    assert isinstance(seg.model, BaselineUNet)
    image = read_image(easy / "imagesTs" / "c12_0000.png")[0].astype(np.float32)
    one = seg.segment_array(image, samples=1, seed=0)
    many = seg.segment_array(image, samples=8, seed=5)
    np.testing.assert_array_equal(one.probabilities, many.probabilities)
    assert many.sample_labels is None
    np.testing.assert_allclose(one.probabilities.sum(0), 1.0, atol=1e-5)
    expected = entropy(torch.from_numpy(one.probabilities)).numpy()
    np.testing.assert_allclose(one.uncertainty, expected, atol=1e-6)
    np.testing.assert_array_equal(one.labels, one.probabilities.argmax(0))


def test_checkpoint_round_trip(trained):
    run, _ = trained
    config, tensors, info = load_model_file(run / "model_last.safetensors")
    assert config.model.architecture == "baseline"
    assert config.model.baseline_widths == (8, 16, 32)
    assert info["step"] == 80
    model = Segmenter.load(run, checkpoint="last").model
    state = model.state_dict()
    assert set(state) == set(tensors)
    assert all(torch.equal(state[k], tensors[k]) for k in tensors)
    x = torch.randn(1, 1, 48, 48)
    rebuilt = build_model(config.model).eval()
    rebuilt.load_state_dict(tensors)
    with torch.no_grad():  # the Segmenter runs channels-last: same numbers up to rounding
        torch.testing.assert_close(rebuilt(x), model(x), atol=1e-5, rtol=1e-5)


def test_3d_baseline_keeps_nifti_geometry(tmp_path):
    cfg = RunConfig(
        model=ModelConfig(spatial_dims=3, num_classes=3, architecture="baseline",
                          baseline_widths=(8, 8, 16)),
        preprocess=PreprocessConfig(spatial_dims=3, grid=(16, 16, 16), data_spatial_dims=3),
        class_names=("c0", "c1", "c2"), file_ending=".nii.gz",
    )
    torch.manual_seed(0)
    save_model(BaselineUNet(cfg.model), cfg, tmp_path / "run" / "model_best.safetensors", {})
    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    vol = np.random.default_rng(0).normal(size=(11, 23, 37)).astype(np.int16)
    save_sitk(tmp_path / "in" / "a_0000.nii.gz", vol, (0.7, 1.3, 2.9), (-12.5, 40.0, 3.25), rot)
    predict_folder(tmp_path / "run", tmp_path / "in", tmp_path / "out", progress_bar=False)
    ref = sitk.ReadImage(str(tmp_path / "in" / "a_0000.nii.gz"))
    pred = sitk.ReadImage(str(tmp_path / "out" / "a.nii.gz"))
    assert pred.GetSize() == ref.GetSize()
    assert pred.GetSpacing() == pytest.approx(ref.GetSpacing(), abs=1e-6)
    assert pred.GetOrigin() == pytest.approx(ref.GetOrigin(), abs=1e-6)
    assert pred.GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-6)


def test_baseline_plans_the_same_grid_as_ldseg():
    for dims in (2, 3):
        ldseg, base = default_model(dims, 1, 3), default_model(dims, 1, 3, "baseline")
        assert base.architecture == "baseline"
        assert base.downsample_factor == ldseg.downsample_factor
        n_base = sum(BaselineUNet(base).parameter_counts().values())
        n_ldseg = sum(build_model(ldseg).parameter_counts().values())
        assert 0.5 < n_base / n_ldseg < 1.5  # same order of size


def test_a_config_from_before_the_baseline_still_loads(trained, tmp_path):
    run, _ = trained
    data = json.loads((run / "config.json").read_text())
    del data["model"]["architecture"], data["model"]["baseline_widths"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_run_config(tmp_path / "old.json").model.architecture == "ldseg"


def test_cli_trains_a_baseline_and_info_names_it(easy, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", str(easy), "-o", str(run), "--model", "baseline", "--epochs", "1",
                 "--iters-per-epoch", "2", "--batch-size", "2", "--grid", "48,48",
                 "--no-progress"]) == 0
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[out.index("{"):])
    assert info["architecture"] == "baseline"
    assert info["config"]["model"]["baseline_widths"] == [16, 32, 64, 128, 256]
    assert info["total"] == info["parameters"]["unet"] > 1_000_000
