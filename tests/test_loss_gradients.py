"""benchmarks/loss_gradients.py: the per-term gradients it reports are real, and recording
them changes nothing of the training it watches."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ldseg.config import ModelConfig, TrainConfig, save_run_config
from ldseg.data.dataset import list_cases, load_dataset_spec
from ldseg.errors import LdsegError
from ldseg.training.plan import plan_run
from ldseg.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
loss_gradients = pytest.importorskip("loss_gradients")

SMALL = ModelConfig(label_encoder_widths=(8, 16, 16), image_encoder_stem=8,
                    image_encoder_widths=(16, 16), denoiser_widths=(16, 32),
                    denoiser_attention=(False, True), label_decoder_widths=(16, 16),
                    denoiser_res_blocks=1, latent_channels=2, image_latent_channels=2)


@pytest.fixture()
def config_file(easy, tmp_path) -> Path:
    spec = load_dataset_spec(easy)
    tc = TrainConfig(batch_size=4, warmup_steps=1, seed=3, val_fraction=0, num_threads=1)
    config = plan_run(spec, [(48, 48)], [(1.0, 1.0)], grid=(32, 32), model=SMALL, train=tc)
    path = tmp_path / "config.json"
    save_run_config(config, path)
    return path


def test_rows_measure_both_terms_from_a_zero_initialised_denoiser(easy, config_file,
                                                                  tmp_path) -> None:
    out = tmp_path / "gradients.csv"
    assert loss_gradients.main([str(easy), "--config", str(config_file), "--steps", "6",
                                "--every", "2", "--output", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert [r["step"] for r in rows] == [1, 3, 5]
    first = rows[0]
    # MONAI's diffusion U-Net zero-initialises its output conv: eps_hat = 0, noise MSE ~ 1
    assert first["eps_hat_std"] == 0.0
    assert 0.7 < first["noise_mse"] < 1.3
    for row in rows:
        assert row["grad_segmentation"] > 0 and row["grad_noise"] > 0
        assert row["ratio"] == pytest.approx(row["grad_segmentation"] / row["grad_noise"])
        assert -1.0 <= row["cosine"] <= 1.0
    assert rows[-1]["eps_hat_std"] > 0  # the denoiser has started to predict


def test_noise_weight_scales_the_noise_gradient(easy, config_file) -> None:
    one = loss_gradients.record(easy, config_file, steps=1, every=1, lambda_noise=1.0)[0]
    ten = loss_gradients.record(easy, config_file, steps=1, every=1, lambda_noise=10.0)[0]
    off = loss_gradients.record(easy, config_file, steps=1, every=1, lambda_noise=0.0)[0]
    assert ten["grad_noise"] == pytest.approx(10 * one["grad_noise"], rel=1e-5)
    assert ten["grad_segmentation"] == pytest.approx(one["grad_segmentation"], rel=1e-5)
    assert off["grad_noise"] == 0.0 and math.isinf(off["ratio"])


def test_recording_changes_no_training_number(easy, config_file) -> None:
    from ldseg.config import load_run_config

    config = load_run_config(config_file)
    cases = list_cases(load_dataset_spec(easy))
    losses = []
    for recorded in (False, True):
        trainer = Trainer(config, config_file.parent / f"run{recorded}", cases, [],
                          progress_bar=False)
        if recorded:
            trainer.loss_fn = loss_gradients.GradientRecorder(trainer.loss_fn,
                                                              trainer.model.denoiser, every=1)
        losses.append([trainer.train_step(step / 4)["loss"] for step in range(4)])
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        losses[-1].append(weights)
    assert losses[0][:4] == losses[1][:4]
    assert torch.equal(losses[0][4], losses[1][4])


def test_a_baseline_run_is_refused_with_one_line(easy, config_file, tmp_path, capsys) -> None:
    from ldseg.config import load_run_config

    config = load_run_config(config_file)
    baseline = replace(config, model=replace(config.model, architecture="baseline"))
    path = tmp_path / "baseline.json"
    save_run_config(baseline, path)
    with pytest.raises(LdsegError, match="baseline"):
        loss_gradients.record(easy, path, steps=1, every=1)
    assert loss_gradients.main([str(easy), "--config", str(path), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and str(path) in err


def test_denoiser_segmentation_grad_scales_only_what_reaches_the_denoiser(easy,
                                                                          config_file) -> None:
    from ldseg.config import load_run_config

    base = load_run_config(config_file)
    cases = list_cases(load_dataset_spec(easy))
    grads, losses = {}, {}
    for share in (1.0, 0.25, 0.0):
        # lambda 0: the segmentation loss is then the only thing that trains the denoiser
        train = replace(base.train, lambda_noise=0.0, denoiser_segmentation_grad=share)
        trainer = Trainer(replace(base, train=train), config_file.parent / f"run{share}", cases,
                          [], progress_bar=False)
        # MONAI zero-initialises the denoiser's output layer, which would block all gradient to
        # its inner layers and the image encoder on the first step: the same small weights
        # there for every share.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in trainer.model.denoiser.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
        losses[share] = trainer.train_step(0.0)["loss"]
        grads[share] = {name: torch.cat([p.grad.flatten() if p.grad is not None
                                         else torch.zeros(p.numel()) for p in part.parameters()])
                        for name, part in trainer.model.named_children()}
    assert losses[1.0] == losses[0.25] == losses[0.0]  # the loss itself is unchanged
    for name in ("denoiser", "image_encoder"):
        assert grads[1.0][name].abs().sum() > 0
        torch.testing.assert_close(grads[0.25][name], 0.25 * grads[1.0][name])
        assert not grads[0.0][name].any()
    assert torch.equal(grads[0.25]["label_decoder"], grads[1.0]["label_decoder"])
