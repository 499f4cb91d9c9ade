"""`ldseg autoencode`: reference labels through the label encoder and decoder, in their geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import save_png, save_sitk
from test_cli import one_line_error, run_cli
from test_inference import ROT, make_run

from ldseg.config import ModelConfig, PreprocessConfig, RunConfig
from ldseg.inference.autoencode import autoencode_label
from ldseg.inference.predictor import Segmenter
from ldseg.model.baseline import BaselineUNet
from ldseg.training.checkpoint import save_model


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    label = np.zeros(shape, np.int64)
    for value in (1, 2):
        centre = [rng.uniform(0.3, 0.7) * n for n in shape]
        dist = sum(((g - c) / n) ** 2 for g, c, n in zip(grids, centre, shape, strict=True))
        label[dist < 0.04] = value
    return label


def test_on_the_model_grid_it_is_the_decoder_of_the_encoder(tmp_path):
    """Grid = image size: no resampling, so the result is argmax f_ld(f_le(y)) itself."""
    run = make_run(tmp_path, 2, 2, (32, 32))
    segmenter = Segmenter.load(run)
    label = blobs((32, 32))
    got = autoencode_label(segmenter, label, (1.0, 1.0))
    model = segmenter.model
    with torch.inference_mode():
        logits = model.label_decoder(model.label_encoder(torch.from_numpy(label)[None]))
    assert got.shape == label.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, logits[0].argmax(0).numpy())
    assert len(np.unique(got)) > 1  # the tiny model's decoder depends on its latent


@pytest.mark.parametrize("dims", [3, 2])
def test_cli_writes_reconstructions_in_the_labels_geometry(tmp_path, dims, capsys):
    run = make_run(tmp_path, dims, 3, (16, 16, 16) if dims == 3 else (16, 32),
                   slice_axis=-1 if dims == 3 else 0)
    labels = tmp_path / "labels"
    save_sitk(labels / "caseA.nii.gz", blobs((11, 23, 37)).astype(np.uint8),
              (0.7, 1.3, 2.9), (-12.5, 40.0, 3.25), ROT)
    code, out, _ = run_cli(["autoencode", "-m", run, "-i", labels, "-o", tmp_path / "out",
                            "--no-progress"], capsys)
    assert code == 0 and "wrote 1 reconstructed" in out
    ref = sitk.ReadImage(str(labels / "caseA.nii.gz"))
    rec = sitk.ReadImage(str(tmp_path / "out" / "caseA.nii.gz"))
    assert rec.GetSize() == ref.GetSize()
    assert rec.GetSpacing() == pytest.approx(ref.GetSpacing(), abs=1e-6)
    assert rec.GetOrigin() == pytest.approx(ref.GetOrigin(), abs=1e-6)
    assert rec.GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-6)
    assert sitk.GetArrayFromImage(rec).max() < 3
    assert not list((tmp_path / "out").rglob(".*")), "temporary files left behind"


def test_labels_outside_the_classes_and_the_baseline_are_one_line_errors(tmp_path, capsys):
    run = make_run(tmp_path, 2, 2, (32, 32))
    bad = tmp_path / "labels"
    label = blobs((32, 32)).astype(np.uint8)
    label[0, 0] = 7
    save_png(bad / "c1.png", label)
    code, _, err = run_cli(["autoencode", "-m", run, "-i", bad, "-o", tmp_path / "out",
                           "--no-progress"], capsys)
    line = one_line_error(code, err)
    assert "c1.png" in line and "[7]" in line and "0..2" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    cfg = RunConfig(model=ModelConfig(spatial_dims=2, num_classes=3, architecture="baseline",
                                      baseline_widths=(8, 16)),
                    preprocess=PreprocessConfig(spatial_dims=2, grid=(32, 32)),
                    class_names=("a", "b", "c"), file_ending=".png")
    save_model(BaselineUNet(cfg.model), cfg, tmp_path / "base" / "model_best.safetensors", {})
    code, _, err = run_cli(["autoencode", "-m", tmp_path / "base", "-i", bad, "-o",
                            tmp_path / "out2", "--no-progress"], capsys)
    assert "no label autoencoder" in one_line_error(code, err)
