"""Planning a run from a dataset: model grid, network sizes and channel/class counts.

Like nnU-Net's planning step: the dataset decides what it can (channels, classes, grid),
the user overrides what they want, and the result is one `RunConfig` saved with the run.
"""

from __future__ import annotations

from dataclasses import replace

from ldseg.config import (
    DEFAULT_DENOISER_SEG_GRAD,
    DEFAULT_NOISE_AUGMENT_STD,
    DEFAULT_SAMPLING_STEPS,
    DiffusionConfig,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
)
from ldseg.data.dataset import DatasetSpec
from ldseg.data.preprocessing import DEFAULT_GRID_VOXELS, choose_grid, slice_axis_for
from ldseg.errors import LdsegError

SIZES = ("lean", "reference")


# LDSeg's latent grid is 1/2^n of the model grid per axis. n is at most DOWNSAMPLINGS (the
# method page's 1/16 in 2D; 1/8 in 3D, where CPU-sized grids are small) and is lowered until
# the latent's shortest axis keeps MIN_LATENT_AXIS voxels. At the method page's 512x512 the
# 1/16 latent is 32x32; at smaller grids a fixed 1/16 leaves the label latent too coarse to
# hold the shapes: knee MRI slices at 160x112, 1/16 = 10x7, the label autoencoder alone (no
# denoiser) reached Dice 0.953 and LDSeg 0.919; at 1/8 (20x14) 0.975 and 0.931-0.941. GlaS at
# 224x320 keeps 1/16 (14x20): 1/8 scored 0.855 against 0.902 (README, Choices). In 3D the
# knee's 56x40x80 gets 1/4 (14x10x20): its label autoencoder reached 0.974 against 1/8's 0.935,
# and with a tenth of the segmentation gradient into the denoiser
# (DEFAULT_DENOISER_SEG_GRAD; without it 1/4 stalled) LDSeg scored Dice 0.924 against 1/8's
# 0.919 and ECE 0.0074 against 0.0153, four seeds (knee3d_denoiser_stall_2026-12-07.md).
DOWNSAMPLINGS = {2: 4, 3: 3}
MIN_LATENT_AXIS = {2: 12, 3: 8}


def planned_downsamplings(grid: tuple[int, ...], most: int | None = None) -> int:
    """The number of 2x downsamplings to the latent for a model grid (see MIN_LATENT_AXIS)."""
    dims = len(grid)
    n = DOWNSAMPLINGS[dims] if most is None else most
    while n > 1 and min(grid) / 2**n < MIN_LATENT_AXIS[dims]:
        n -= 1
    return n


def default_model(spatial_dims: int, in_channels: int, num_classes: int,
                  architecture: str = "ldseg", size: str = "lean",
                  downsamplings: int | None = None) -> ModelConfig:
    """The networks `ldseg train` builds.

    "reference": the method page's widths in 2D. In 3D on a CPU the grid is small, so the
    latent is at most 1/8 of the grid (the planner lowers it to 1/4 for knee-sized grids) with 4
    channels instead of 1/16 with 1: at 1/16 a 48x32x80 grid leaves 3x2x5 latent voxels, too
    few to carry two bones' shapes. The 3D image latent
    has 8 channels: it is the only way from the image to the label latent, and on the knee
    (three seeds, 30 minutes) 8 against 4 scored Dice 0.919 against 0.914 (1 sample; sd over
    seeds 0.0025 against 0.0089) and ECE 0.0156 against 0.0162
    (benchmarks/results/knee3d_image_latent_2026-12-07.md).

    "lean" (the default): the same networks with the full-resolution stages narrowed (label
    encoder 8, image encoder stem 8 and first block 16, last decoder block 16 channels) and
    the half-resolution ones to 32. Three of the four networks run at image resolution, so
    these few layers were most of a training step: one step is 2x (2D, knee 160x112, batch 8:
    0.75 -> 0.38 s) to 3.3x (3D, 56x40x80, batch 2: 3.88 -> 1.17 s) faster, so a wall-clock
    budget buys that many more steps (README, Choices). The latent, the
    denoiser and the sampler are unchanged. In 2D its image latent has 4 channels (the
    reference's 1 is a bottleneck: knee slices 0.911 with 1, 0.931-0.941 with 2, 4 or 8).

    The baseline U-Net downsamples DOWNSAMPLINGS times (so both plan the same grid) and has
    about as many parameters as the reference LDSeg: 2D 1.63 M vs 1.83 M, 3D 4.7 M vs 5.8 M.

    `downsamplings` (default DOWNSAMPLINGS; `plan_run` lowers it for small grids) sets the
    latent grid, 1/2^n of the model grid per axis; fewer drop the innermost stages of the
    encoders and the decoder."""
    if size not in SIZES:
        raise LdsegError(f"model size must be one of {SIZES}, got '{size}'")
    if spatial_dims == 2:
        model = ModelConfig(spatial_dims=2, in_channels=in_channels, num_classes=num_classes)
        if size == "lean":
            model = replace(model, label_encoder_widths=(8, 32, 64, 64, 32),
                            image_encoder_stem=8, image_encoder_widths=(16, 32, 64, 32),
                            label_decoder_widths=(32, 64, 32, 16), image_latent_channels=4)
    else:
        model = ModelConfig(
            spatial_dims=3, in_channels=in_channels, num_classes=num_classes,
            label_encoder_widths=(16, 32, 64, 32), image_encoder_widths=(32, 64, 32),
            label_decoder_widths=(32, 64, 32), latent_channels=4, image_latent_channels=8,
            denoiser_widths=(32, 64, 64), dropout=0.0,
        )
        if size == "lean":
            model = replace(model, label_encoder_widths=(8, 32, 64, 32), image_encoder_stem=8,
                            image_encoder_widths=(16, 32, 32),
                            label_decoder_widths=(32, 32, 16))
    if architecture == "baseline":
        model = replace(model, architecture="baseline")
    if downsamplings is not None or architecture == "baseline":
        model = with_downsamplings(model, DOWNSAMPLINGS[spatial_dims] if downsamplings is None
                                   else downsamplings)
    return model


def with_downsamplings(model: ModelConfig, n: int) -> ModelConfig:
    """The same networks with n downsamplings: stages are dropped from (or the innermost width
    repeated into) the low-resolution middle, so the full-resolution ends stay as they are.
    The baseline gets n + 1 levels doubling from 16 (2D) or 32 (3D) channels, at most 256."""
    if not 1 <= n <= 6:
        raise LdsegError(f"downsamplings must be between 1 and 6, got {n}")
    if model.architecture == "baseline":
        first = 16 if model.spatial_dims == 2 else 32  # 2D (16, ..., 256), 3D (32, ..., 256)
        return replace(model, baseline_widths=tuple(min(first * 2**i, 256)
                                                    for i in range(n + 1)))

    def resize(widths: tuple[int, ...], length: int, keep_last: bool) -> tuple[int, ...]:
        if keep_last:  # the decoder: its last (full-resolution) stages are kept
            return resize(widths[::-1], length, False)[::-1]
        if length < len(widths):  # the encoders: keep the first stages and the output width
            return widths[:length - 1] + widths[-1:]
        return widths[:-1] + (widths[-2],) * (length - len(widths)) + widths[-1:]

    return replace(model,
                   label_encoder_widths=resize(model.label_encoder_widths, n + 1, False),
                   image_encoder_widths=resize(model.image_encoder_widths, n, False),
                   label_decoder_widths=resize(model.label_decoder_widths, n, True))


def plan_run(
    spec: DatasetSpec,
    shapes: list[tuple[int, ...]],
    spacings: list[tuple[float, ...]],
    *,
    dims: int | None = None,
    grid: tuple[int, ...] = (),
    max_voxels: int = 0,
    slice_axis: int = -1,
    model: ModelConfig | None = None,
    diffusion: DiffusionConfig | None = None,
    train: TrainConfig | None = None,
    auto_flips: bool = True,
    auto_noise: bool = True,
    auto_steps: bool | None = None,
    auto_seg_grad: bool = True,
    keep_aspect: bool = True,
    downsamplings: int | str | None = None,
) -> RunConfig:
    """Fill in everything the dataset determines; `shapes`/`spacings` are the training cases'.

    `downsamplings`: a number sets the latent factor 2^n (LDSeg) or the U-Net's depth
    (baseline); "auto" lets LDSeg's planner lower it for small grids (`planned_downsamplings`),
    which is also what happens when no `model` is given; None with a model keeps it as it is.
    `auto_steps` sets the sampling steps by dimensionality (DEFAULT_SAMPLING_STEPS); None does so
    unless a `diffusion` config is given. `auto_seg_grad` sets LDSeg's share of the
    segmentation gradient into the denoiser (DEFAULT_DENOISER_SEG_GRAD).
    """
    data_dims = spec.spatial_dims
    dims = dims or data_dims
    if dims > data_dims:
        raise LdsegError(f"{spec.root}: a {data_dims}D dataset cannot train a {dims}D model")
    auto = downsamplings == "auto" or (downsamplings is None and model is None)
    model = model or default_model(dims, spec.num_channels, spec.num_classes)
    model = replace(model, spatial_dims=dims, in_channels=spec.num_channels,
                    num_classes=spec.num_classes)
    if isinstance(downsamplings, int):
        model = with_downsamplings(model, downsamplings)
    model.validate()
    axis = -1
    if dims < data_dims:
        axis = slice_axis_for(tuple(spacings[0]), slice_axis)
        shapes = [tuple(s for a, s in enumerate(shape) if a != axis) for shape in shapes]
        spacings = [tuple(s for a, s in enumerate(sp) if a != axis) for sp in spacings]
    if not grid:  # at the deepest factor, so the baseline (never lowered) plans the same grid
        grid = choose_grid(shapes, spacings, max_voxels or DEFAULT_GRID_VOXELS[dims],
                           model.downsample_factor)
    if auto and model.architecture == "ldseg" and len(grid) == dims:
        most = len(model.label_encoder_widths) - 1
        n = planned_downsamplings(tuple(grid), most)
        if n != most:
            model = with_downsamplings(model, n)
    multiple = model.downsample_factor
    if len(grid) != dims or any(g % multiple for g in grid):
        raise LdsegError(f"grid {tuple(grid)} must have {dims} axes, each a multiple of {multiple}")
    preprocess = PreprocessConfig(
        spatial_dims=dims, grid=tuple(grid), slice_axis=axis, data_spatial_dims=data_dims,
        keep_aspect=keep_aspect,
    )
    train = train or TrainConfig()
    if auto_flips:  # mirror 2D images; 3D anatomy (left/right, femur above tibia) is not
        train = replace(train, flip_axes=(0, 1) if dims == 2 else ())
    if auto_noise:  # the training-noise width that held up for this dimensionality
        train = replace(train, noise_augment_std=DEFAULT_NOISE_AUGMENT_STD[dims])
    if auto_seg_grad and model.architecture == "ldseg":
        train = replace(train, denoiser_segmentation_grad=DEFAULT_DENOISER_SEG_GRAD)
    if auto_steps is None:
        auto_steps = diffusion is None
    diffusion = diffusion or DiffusionConfig()
    if auto_steps:  # the sampling steps that scored best for this dimensionality
        diffusion = replace(diffusion, sampling_steps=DEFAULT_SAMPLING_STEPS[dims])
    config = RunConfig(
        model=model, diffusion=diffusion, preprocess=preprocess,
        train=train, class_names=tuple(spec.class_names), channel_names=tuple(spec.channel_names),
        file_ending=spec.file_ending, dataset_name=spec.name,
    )
    config.validate()
    return config
