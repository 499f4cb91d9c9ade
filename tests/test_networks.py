"""The four networks: shapes in 2D and 3D for several class/channel counts, eval-mode sanity."""

from __future__ import annotations

import pytest
import torch

from ldseg.config import ModelConfig
from ldseg.errors import LdsegError
from ldseg.model.networks import LDSeg
from ldseg.training.plan import default_model

SMALL = dict(label_encoder_widths=(8, 8, 8), image_encoder_stem=8, image_encoder_widths=(8, 8),
             denoiser_widths=(8, 16), denoiser_attention=(False, True),
             label_decoder_widths=(8, 8), denoiser_res_blocks=1)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (32, 48)), (3, (16, 16, 32))])
@pytest.mark.parametrize("channels,classes", [(1, 2), (3, 4), (2, 3)])
@pytest.mark.parametrize("label_input", ["onehot", "integer"])
def test_shapes(spatial_dims, shape, channels, classes, label_input):
    cfg = ModelConfig(spatial_dims=spatial_dims, in_channels=channels, num_classes=classes,
                      latent_channels=2, image_latent_channels=3, label_input=label_input, **SMALL)
    model = LDSeg(cfg)
    b = 2
    x = torch.randn(b, channels, *shape)
    y = torch.randint(0, classes, (b, *shape))
    latent = tuple(s // 4 for s in shape)
    z = model.label_encoder(y)
    zi = model.image_encoder(x)
    assert z.shape == (b, 2, *latent) and zi.shape == (b, 3, *latent)
    eps = model.denoiser(z, zi, torch.tensor([0, 999]))
    assert eps.shape == z.shape
    assert model.label_decoder(z).shape == (b, classes, *shape)


def test_reference_2d_sizes_match_the_method_page():
    counts = LDSeg(ModelConfig()).parameter_counts()
    # Method page: 0.19 M / 0.29 M / 1.01 M / 0.27 M (ours: stride-2 convs add to the encoder).
    assert counts["image_encoder"] == pytest.approx(0.29e6, rel=0.05)
    assert counts["denoiser"] == pytest.approx(1.01e6, rel=0.05)
    assert counts["label_decoder"] == pytest.approx(0.27e6, rel=0.05)
    assert 1.6e6 < sum(counts.values()) < 2.0e6


def test_label_latent_is_standardized_per_sample():
    model = LDSeg(ModelConfig(num_classes=3, **SMALL)).eval()
    z = model.label_encoder(torch.randint(0, 3, (3, 64, 64)))
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_denoiser_handles_latent_grids_not_divisible_by_its_depth():
    cfg = ModelConfig(**{**SMALL, "denoiser_widths": (8, 8, 16),
                         "denoiser_attention": (False, False, True)})
    model = LDSeg(cfg)
    z = torch.randn(1, 1, 7, 5)
    assert model.denoiser(z, torch.randn(1, 1, 7, 5), torch.tensor([10])).shape == z.shape


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_eval_mode_gives_finite_deterministic_outputs(norm):
    model = LDSeg(ModelConfig(norm=norm, **SMALL))
    model.train()
    for _ in range(2):  # let BatchNorm see some statistics
        model.label_decoder(model.label_encoder(torch.randint(0, 2, (4, 32, 32))))
    model.eval()
    y = torch.randint(0, 2, (2, 32, 32))
    a = model.label_decoder(model.label_encoder(y))
    b = model.label_decoder(model.label_encoder(y))
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_default_3d_model_keeps_a_useful_latent():
    cfg = default_model(3, 1, 3)
    assert cfg.downsample_factor == 8 and cfg.latent_channels == 4
    # the image latent, the denoiser's only view of the image, is wider than the label latent
    assert cfg.image_latent_channels == 8
    model = LDSeg(cfg)
    y = torch.randint(0, 3, (1, 16, 16, 32))
    assert model.label_encoder(y).shape == (1, 4, 2, 2, 4)
    assert model.image_encoder(torch.randn(1, 1, 16, 16, 32)).shape == (1, 8, 2, 2, 4)


@pytest.mark.parametrize("dims,grid", [(2, (64, 64)), (3, (16, 16, 32))])
def test_lean_size_cuts_the_training_flops_and_keeps_the_latent(dims, grid):
    """Lean narrows only the full-resolution stages: the latent and the denoiser are the same,
    and a training forward/backward costs far fewer FLOPs (what makes a step 2-3x faster)."""
    from torch.utils.flop_counter import FlopCounterMode

    flops, latents = {}, {}
    for size in ("lean", "reference"):
        cfg = default_model(dims, 1, 3, size=size)
        torch.manual_seed(0)
        model = LDSeg(cfg)
        y = torch.randint(0, 3, (2, *grid))
        with FlopCounterMode(display=False) as counter:
            z0 = model.label_encoder(y)
            eps_hat = model.denoiser(z0, model.image_encoder(torch.randn(2, 1, *grid)),
                                     torch.tensor([10, 500]))
            model.label_decoder(z0 - eps_hat).square().mean().backward()
        flops[size], latents[size] = counter.get_total_flops(), z0.shape
        assert cfg.denoiser_widths == default_model(dims, 1, 3, size="reference").denoiser_widths
    assert latents["lean"] == latents["reference"]
    assert flops["lean"] < 0.6 * flops["reference"]
    with pytest.raises(LdsegError, match="size"):
        default_model(dims, 1, 3, size="huge")


@pytest.mark.parametrize("dims,grid", [(2, (32, 48)), (3, (16, 16, 32))])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_downsamplings_set_the_latent_grid_and_keep_the_full_resolution_ends(dims, grid, n):
    from ldseg.model.baseline import BaselineUNet

    default = default_model(dims, 1, 3)
    cfg = default_model(dims, 1, 3, downsamplings=n)
    assert cfg.downsample_factor == 2**n
    assert cfg.label_encoder_widths[0] == default.label_encoder_widths[0]
    assert cfg.image_encoder_widths[0] == default.image_encoder_widths[0]
    assert cfg.label_decoder_widths[-1] == default.label_decoder_widths[-1]
    grid = tuple(g * 2**n // 8 for g in grid)  # a multiple of 2^n
    model = LDSeg(cfg)
    y = torch.randint(0, 3, (1, *grid))
    z = model.label_encoder(y)
    assert z.shape[2:] == tuple(g // 2**n for g in grid)
    assert model.image_encoder(torch.randn(1, 1, *grid)).shape[2:] == z.shape[2:]
    assert model.label_decoder(z).shape == (1, 3, *grid)
    base = default_model(dims, 1, 3, "baseline", downsamplings=n)
    assert base.downsample_factor == 2**n
    assert BaselineUNet(base)(torch.randn(1, 1, *grid)).shape == (1, 3, *grid)
    with pytest.raises(LdsegError, match="downsamplings"):
        default_model(dims, 1, 3, downsamplings=0)
