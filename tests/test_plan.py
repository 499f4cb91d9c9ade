"""Planning: the latent factor follows the grid, explicit choices win, the baseline keeps its
depth and plans the same grid as LDSeg."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldseg.data.dataset import DatasetSpec
from ldseg.errors import LdsegError
from ldseg.training.plan import default_model, plan_run, planned_downsamplings


def _spec(dims: int, channels: int = 1, classes: int = 3) -> DatasetSpec:
    return DatasetSpec(root=Path("ds"), name="ds", channel_names=["c"] * channels,
                       class_names=["background"] + [f"k{i}" for i in range(1, classes)],
                       num_training=1, file_ending=".png" if dims == 2 else ".nii.gz")


@pytest.mark.parametrize("grid,expected", [
    ((512, 512), 4),  # the method page's 32x32 latent
    ((224, 320), 4),  # GlaS: 14x20
    ((160, 112), 3),  # knee slices: 1/16 would leave 10x7
    ((128, 128), 3),
    ((48, 48), 2),
    ((16, 16), 1),  # never below one downsampling
    ((56, 40, 80), 2),  # 3D knee: 14x10x20 (1/8 would leave 7x5x10)
    ((128, 128, 256), 3),
    ((64, 64, 64), 3),
    ((24, 16, 32), 1),
])
def test_planned_downsamplings_keep_the_latent_axis(grid, expected):
    assert planned_downsamplings(grid) == expected
    assert planned_downsamplings(grid, most=1) == 1


def test_plan_lowers_the_latent_factor_for_small_grids_and_keeps_explicit_choices():
    shapes, spacings = [(104, 160)] * 2, [(1.0, 1.0)] * 2
    planned = plan_run(_spec(2), shapes, spacings)
    assert planned.preprocess.grid == (112, 160)
    assert planned.model.downsample_factor == 8
    # the full-resolution ends stay those of the default model
    default = default_model(2, 1, 3)
    assert planned.model.label_encoder_widths[0] == default.label_encoder_widths[0]
    assert planned.model.label_decoder_widths[-1] == default.label_decoder_widths[-1]
    assert planned.model.image_latent_channels == 4
    explicit = plan_run(_spec(2), shapes, spacings, downsamplings=4)
    assert explicit.model.downsample_factor == 16
    given = plan_run(_spec(2), shapes, spacings, model=default_model(2, 1, 3))
    assert given.model.downsample_factor == 16  # a model given as it is stays so
    auto = plan_run(_spec(2), shapes, spacings, model=default_model(2, 1, 3),
                    downsamplings="auto")
    assert auto.model == planned.model
    big = plan_run(_spec(2), [(512, 512)], [(1.0, 1.0)], grid=(512, 512))
    assert big.model.downsample_factor == 16


def test_the_baseline_keeps_its_depth_and_plans_the_same_grid():
    shapes, spacings = [(104, 160)] * 2, [(1.0, 1.0)] * 2
    ldseg = plan_run(_spec(2), shapes, spacings, downsamplings="auto")
    base = plan_run(_spec(2), shapes, spacings, model=default_model(2, 1, 3, "baseline"),
                    downsamplings="auto")
    assert base.preprocess.grid == ldseg.preprocess.grid
    assert base.model.baseline_widths == (16, 32, 64, 128, 256)
    shallow = plan_run(_spec(2), shapes, spacings, model=default_model(2, 1, 3, "baseline"),
                       downsamplings=3)
    assert shallow.model.baseline_widths == (16, 32, 64, 128)
    deep3d = default_model(3, 1, 3, "baseline")
    assert deep3d.baseline_widths == (32, 64, 128, 256)


def test_a_grid_the_planned_factor_does_not_divide_is_refused():
    with pytest.raises(LdsegError, match="multiple of 8"):
        plan_run(_spec(2), [(100, 100)], [(1.0, 1.0)], grid=(100, 100))
    with pytest.raises(LdsegError, match="2 axes"):
        plan_run(_spec(2), [(100, 100)], [(1.0, 1.0)], grid=(96, 96, 96))


def test_training_noise_and_flips_are_planned_by_dimensionality_unless_given():
    from ldseg.config import TrainConfig

    slices = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], dims=2)
    volume = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)])
    assert (slices.train.noise_augment_std, slices.train.flip_axes) == (2.0, (0, 1))
    assert (volume.train.noise_augment_std, volume.train.flip_axes) == (1.0, ())
    given = TrainConfig(noise_augment_std=0.3, flip_axes=(1,))
    kept = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], dims=2, train=given,
                    auto_flips=False, auto_noise=False)
    assert (kept.train.noise_augment_std, kept.train.flip_axes) == (0.3, (1,))


def test_sampling_steps_are_planned_by_dimensionality_unless_given():
    from ldseg.config import DEFAULT_SAMPLING_STEPS, DiffusionConfig

    slices = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], dims=2)
    volume = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)])
    assert DEFAULT_SAMPLING_STEPS == {2: 15, 3: 2}
    assert (slices.diffusion.sampling_steps, volume.diffusion.sampling_steps) == (15, 2)
    given = DiffusionConfig(sampling_steps=7, eta=0.5)
    kept = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], diffusion=given)
    assert (kept.diffusion.sampling_steps, kept.diffusion.eta) == (7, 0.5)
    planned = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], diffusion=given,
                       auto_steps=True)
    assert (planned.diffusion.sampling_steps, planned.diffusion.eta) == (2, 0.5)


def test_denoiser_segmentation_gradient_is_planned_for_ldseg_unless_given():
    from ldseg.config import DEFAULT_DENOISER_SEG_GRAD, TrainConfig

    assert DEFAULT_DENOISER_SEG_GRAD == 0.1
    slices = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], dims=2)
    volume = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)])
    assert slices.train.denoiser_segmentation_grad == 0.1
    assert volume.train.denoiser_segmentation_grad == 0.1
    given = TrainConfig(denoiser_segmentation_grad=0.5)
    kept = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)], train=given,
                    auto_seg_grad=False)
    assert kept.train.denoiser_segmentation_grad == 0.5
    baseline = plan_run(_spec(3), [(40, 48, 32)], [(1.0, 1.0, 3.0)],
                        model=default_model(3, 1, 3, architecture="baseline"))
    assert baseline.train.denoiser_segmentation_grad == 1.0  # no denoiser: left as it is


def test_the_knee_grid_plans_a_quarter_latent_in_3d():
    knee = plan_run(_spec(3), [(320, 230, 444)] * 4, [(0.36, 0.36, 0.7)] * 4,
                    grid=(56, 40, 80))
    assert knee.model.downsample_factor == 4
    assert (knee.model.spatial_dims, knee.train.denoiser_segmentation_grad) == (3, 0.1)
    unet = plan_run(_spec(3), [(320, 230, 444)] * 4, [(0.36, 0.36, 0.7)] * 4,
                    grid=(56, 40, 80), model=default_model(3, 1, 3, architecture="baseline"))
    assert unet.model.downsample_factor == 8  # the baseline keeps its depth
