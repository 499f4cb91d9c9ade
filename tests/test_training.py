"""Training learns, checkpoints are complete, and a resumed run continues where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from ldseg.config import ModelConfig, TrainConfig
from ldseg.errors import LdsegError
from ldseg.training.checkpoint import load_model_file
from ldseg.training.trainer import TRAIN_STATE, train

SMALL = ModelConfig(label_encoder_widths=(16, 16, 16), image_encoder_stem=16,
                    image_encoder_widths=(16, 16), denoiser_widths=(16, 32),
                    denoiser_attention=(False, True), label_decoder_widths=(16, 16),
                    denoiser_res_blocks=1, dropout=0.0)


def test_validation_dice_clearly_rises(easy, tmp_path):
    tc = TrainConfig(batch_size=4, epochs=8, iters_per_epoch=10, val_fraction=0.25, lr=2e-3,
                     warmup_steps=5, seed=0)
    state = train(easy, tmp_path / "run", progress_bar=False, grid=(48, 48), model=SMALL, train=tc)
    dice = [row["val_dice"] for row in state.history]
    assert len(dice) == 8
    assert dice[-1] > 0.6, dice
    assert dice[-1] > dice[0] + 0.2, dice
    assert state.best_dice == pytest.approx(max(dice))
    run = tmp_path / "run"
    for name in ("config.json", "model_best.safetensors", "model_last.safetensors", TRAIN_STATE,
                 "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    config, tensors, info = load_model_file(run / "model_best.safetensors")
    assert config.model.num_classes == 3 and config.preprocess.grid == (48, 48)
    assert config.class_names == ("background", "disc", "square")
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 0
    assert (run / "log.csv").read_text().count("\n") == 9  # header + one row per epoch


BASELINE = ModelConfig(architecture="baseline", baseline_widths=(8, 16, 32))


@pytest.mark.parametrize("model", [SMALL, BASELINE], ids=["ldseg", "baseline"])
def test_same_seed_same_numbers(easy, tmp_path, model):
    tc = TrainConfig(batch_size=2, epochs=1, iters_per_epoch=4, val_fraction=0.25, seed=3)
    a = train(easy, tmp_path / "a", progress_bar=False, grid=(48, 48), model=model, train=tc)
    b = train(easy, tmp_path / "b", progress_bar=False, grid=(48, 48), model=model, train=tc)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.history[0]["val_dice"] == b.history[0]["val_dice"]
    wa = load_model_file(tmp_path / "a" / "model_last.safetensors")[1]
    wb = load_model_file(tmp_path / "b" / "model_last.safetensors")[1]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_with_identical_losses(easy, tmp_path):
    def cfg(epochs):
        # Constant LR: a 1-epoch run is then exactly the first epoch of a 3-epoch run.
        return TrainConfig(batch_size=2, epochs=epochs, iters_per_epoch=3, val_fraction=0.25,
                           seed=1, lr_schedule="constant")
    full = train(easy, tmp_path / "full", progress_bar=False, grid=(48, 48), model=SMALL,
                 train=cfg(3))
    train(easy, tmp_path / "part", progress_bar=False, grid=(48, 48), model=SMALL, train=cfg(1))
    from ldseg.config import RunConfig
    resumed = train(easy, tmp_path / "part", RunConfig(train=cfg(3)), resume=True,
                    progress_bar=False)
    assert resumed.step == full.step == 9
    for r, f in zip(resumed.history, full.history, strict=True):
        assert r["loss"] == pytest.approx(f["loss"], rel=1e-5, abs=1e-6)
    wa = load_model_file(tmp_path / "full" / "model_last.safetensors")[1]
    wb = load_model_file(tmp_path / "part" / "model_last.safetensors")[1]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_without_a_run_is_an_error(easy, tmp_path):
    with pytest.raises(LdsegError, match="nothing to resume"):
        train(easy, tmp_path / "none", resume=True, progress_bar=False)


def test_budget_stops_training_by_wall_clock(easy, tmp_path):
    tc = TrainConfig(batch_size=2, budget_minutes=0.05, iters_per_epoch=1000, val_fraction=0.25)
    state = train(easy, tmp_path / "b", progress_bar=False, grid=(48, 48), model=SMALL, train=tc)
    assert 3.0 <= state.elapsed < 30 and state.step < 1000
    assert state.history[-1].get("val_dice") is not None  # a final validation and checkpoint
    assert (tmp_path / "b" / "model_best.safetensors").is_file()


def test_an_existing_run_is_never_overwritten(easy, tmp_path):
    tc = TrainConfig(batch_size=2, epochs=1, iters_per_epoch=1, val_fraction=0.25)
    train(easy, tmp_path / "r", progress_bar=False, grid=(48, 48), model=SMALL, train=tc)
    before = (tmp_path / "r" / "model_last.safetensors").read_bytes()
    with pytest.raises(LdsegError, match="already holds a training run"):
        train(easy, tmp_path / "r", progress_bar=False, grid=(48, 48), model=SMALL, train=tc)
    assert (tmp_path / "r" / "model_last.safetensors").read_bytes() == before


def test_training_state_round_trips_through_the_hashed_checkpoint(easy, tmp_path):
    """The state file holds 0-dim tensors (optimizer steps): hashing and loading must cope."""
    from ldseg.training.checkpoint import load_tensors

    tc = TrainConfig(batch_size=2, epochs=1, iters_per_epoch=2, val_fraction=0.25)
    train(easy, tmp_path / "r", progress_bar=False, grid=(48, 48), model=SMALL, train=tc)
    tensors, meta = load_tensors(tmp_path / "r" / TRAIN_STATE)
    assert len(meta["sha256"]) == 64
    assert any(t.ndim == 0 for t in tensors.values())
