"""Prediction writes label maps (and uncertainty) on exactly the input's grid and geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import save_sitk

from ldseg.config import ModelConfig, PreprocessConfig, RunConfig
from ldseg.data.imageio import read_image, write_image
from ldseg.errors import LdsegError
from ldseg.inference.predictor import Segmenter, predict_folder
from ldseg.model.networks import LDSeg
from ldseg.training.checkpoint import save_model

TINY = dict(label_encoder_widths=(8, 8, 8), image_encoder_stem=8, image_encoder_widths=(8, 8),
            denoiser_widths=(8, 16), denoiser_attention=(False, True),
            label_decoder_widths=(8, 8), denoiser_res_blocks=1)


def make_run(tmp_path, dims: int, data_dims: int, grid, channels=1, classes=3, slice_axis=-1):
    cfg = RunConfig(
        model=ModelConfig(spatial_dims=dims, in_channels=channels, num_classes=classes, **TINY),
        preprocess=PreprocessConfig(spatial_dims=dims, grid=grid, data_spatial_dims=data_dims,
                                    slice_axis=slice_axis),
        class_names=tuple(f"c{i}" for i in range(classes)),
        file_ending=".nii.gz" if data_dims == 3 else ".png",
    )
    torch.manual_seed(0)
    model = LDSeg(cfg.model)
    with torch.no_grad():  # make the decoder's output depend on the latent, not only its bias
        model.label_decoder.out.bias.zero_()
    run = tmp_path / "run"
    save_model(model, cfg, run / "model_best.safetensors", {})
    return run



ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("dims", [3, 2])
def test_predict_preserves_nifti_geometry_exactly(tmp_path, dims):
    run = make_run(tmp_path, dims, 3, (16, 16, 16) if dims == 3 else (16, 32),
                   slice_axis=-1 if dims == 3 else 0)
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(11, 23, 37)).astype(np.int16)
    save_sitk(inp / "caseA_0000.nii.gz", vol, (0.7, 1.3, 2.9), (-12.5, 40.0, 3.25), ROT)
    out = tmp_path / "out"
    written = predict_folder(run, inp, out, steps=3, samples=2, progress_bar=False)
    assert [p.name for p in written] == ["caseA.nii.gz"]
    ref = sitk.ReadImage(str(inp / "caseA_0000.nii.gz"))
    for path in (out / "caseA.nii.gz", out / "uncertainty" / "caseA.nii.gz"):
        pred = sitk.ReadImage(str(path))
        assert pred.GetSize() == ref.GetSize()
        assert pred.GetSpacing() == pytest.approx(ref.GetSpacing(), abs=1e-6)
        assert pred.GetOrigin() == pytest.approx(ref.GetOrigin(), abs=1e-6)
        assert pred.GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-6)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "caseA.nii.gz")))
    assert labels.dtype == np.uint8 and labels.max() < 3
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty" / "caseA.nii.gz")))
    assert unc.dtype == np.float32 and unc.min() >= 0 and unc.max() <= np.log(3) + 1e-5
    assert (out / "pictures" / "caseA.png").is_file()
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_predict_2d_keeps_the_input_size_and_writes_float_uncertainty(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 48), channels=3, classes=2)
    inp = tmp_path / "in"
    rgb = np.random.default_rng(0).integers(0, 255, (3, 45, 71)).astype(np.uint8)
    from PIL import Image
    inp.mkdir()
    Image.fromarray(np.moveaxis(rgb, 0, -1)).save(inp / "img_0000.png")
    out = tmp_path / "out"
    predict_folder(run, inp, out, steps=2, samples=3, progress_bar=False)
    labels, _ = read_image(out / "img.png")
    assert labels.shape == (1, 45, 71)
    unc, _ = read_image(out / "uncertainty" / "img.tif")
    assert unc.shape == (1, 45, 71) and unc.dtype == np.float32


def test_api_returns_probabilities_uncertainty_and_samples(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 32), classes=3)
    seg = Segmenter.load(run)
    image = np.random.default_rng(0).normal(size=(1, 40, 50)).astype("f4")
    res = seg.segment_array(image, steps=4, samples=4, seed=3)
    assert res.labels.shape == (40, 50) and res.probabilities.shape == (3, 40, 50)
    assert np.allclose(res.probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(res.labels, res.probabilities.argmax(0))
    assert res.sample_labels.shape == (4, 40, 50)
    entropy = -(res.probabilities * np.log(np.clip(res.probabilities, 1e-12, 1))).sum(0)
    assert np.allclose(res.uncertainty, entropy, atol=1e-5)
    again = seg.segment_array(image, steps=4, samples=4, seed=3)
    assert np.array_equal(again.probabilities, res.probabilities)  # seeded: reproducible


@pytest.mark.parametrize("full_res_voxels", [32 * 32, 2 * 32 * 32, 10**9])
def test_multi_sample_mean_equals_mean_of_single_samples(tmp_path, full_res_voxels):
    """N samples batched after one image-encoder pass give the mean of N separate draws,
    whether the full-resolution networks see one image per call, two, or the whole batch."""
    from ldseg.diffusion.schedule import NoiseSchedule
    from ldseg.inference.sampling import segment_batch

    run = make_run(tmp_path, 2, 2, (32, 32), classes=3)
    seg = Segmenter.load(run)
    x = torch.randn(2, 1, 32, 32)
    sched = NoiseSchedule()
    with torch.inference_mode():
        batched = segment_batch(seg.model, sched, x, steps=3, samples=3,
                                generator=torch.Generator().manual_seed(0),
                                full_res_voxels=full_res_voxels)
        noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        from ldseg.diffusion.sampler import sample_latent
        zi = seg.model.image_encoder(x).repeat_interleave(3, 0)
        z = sample_latent(lambda z, t: seg.model.denoiser(z, zi, t), sched, noise, 3)
        per_sample = torch.softmax(seg.model.label_decoder(z), 1).reshape(2, 3, 3, 32, 32)
    assert torch.allclose(batched.mean_probs, per_sample.mean(1), atol=1e-5)
    assert batched.sample_labels.shape == (2, 3, 32, 32)
    assert torch.equal(batched.sample_labels, per_sample.argmax(2).to(torch.uint8))


def test_channel_count_mismatch_is_a_one_line_error(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 32), channels=1)
    inp = tmp_path / "in"
    inp.mkdir()
    write_image(inp / "a_0000.png", np.zeros((20, 20), np.uint8))
    write_image(inp / "a_0001.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(LdsegError, match=r"a_0000\.png: has 2 channel\(s\).*trained on 1"):
        predict_folder(run, inp, tmp_path / "out", steps=1, progress_bar=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_existing_output_folder_is_not_overwritten_by_default(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 32))
    inp = tmp_path / "in"
    inp.mkdir()
    write_image(inp / "a_0000.png", np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(LdsegError, match="not empty"):
        predict_folder(run, inp, out, steps=1, progress_bar=False)
    predict_folder(run, inp, out, steps=1, progress_bar=False, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me" and (out / "a.png").is_file()


def test_predict_a_single_file(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 32))
    write_image(tmp_path / "scan_0000.png", np.full((25, 30), 9, np.uint8))
    written = predict_folder(run, tmp_path / "scan_0000.png", tmp_path / "out", steps=1,
                             progress_bar=False)
    assert [p.name for p in written] == ["scan.png"]
    assert read_image(written[0])[0].shape == (1, 25, 30)


def test_a_flipped_byte_in_a_checkpoint_is_detected(tmp_path):
    run = make_run(tmp_path, 2, 2, (32, 32))
    path = run / "model_best.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # inside the tensor data: safetensors itself still parses it
    path.write_bytes(bytes(data))
    with pytest.raises(LdsegError, match="content hash mismatch"):
        Segmenter.load(run)


def test_several_samples_default_to_ddpm_one_sample_to_the_runs_sampler(tmp_path):
    """--samples N > 1 without --eta samples with DDPM (diverse samples, calibrated mean);
    one sample keeps the run's DDIM."""
    from ldseg.inference.predictor import MULTI_SAMPLE_ETA, default_eta

    run = make_run(tmp_path, 2, 2, (32, 32))
    seg = Segmenter.load(run)
    image = np.random.default_rng(3).random((1, 32, 32)).astype(np.float32)
    assert seg.config.diffusion.eta == 0.0 and MULTI_SAMPLE_ETA == 1.0
    assert default_eta(seg.config, 1) == 0.0 and default_eta(seg.config, 4) == 1.0

    def probs(**kw):
        return seg.segment_array(image, steps=3, seed=0, **kw).probabilities

    np.testing.assert_array_equal(probs(samples=4), probs(samples=4, eta=1.0))
    assert not np.array_equal(probs(samples=4), probs(samples=4, eta=0.0))
    np.testing.assert_array_equal(probs(samples=1), probs(samples=1, eta=0.0))
