"""Typed configuration, saved as JSON next to every run and checkpoint.

Loading validates against the dataclasses: unknown or missing keys are errors, so a config
file can never smuggle in anything but plain values.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ldseg.errors import LdsegError
from ldseg.files import atomic_write

TIMESTEP_SAMPLINGS = ("uniform", "late")  # DiffusionConfig.timestep_sampling; the CLI's choices
PAD_VALUES = ("border", "min")  # PreprocessConfig.pad_value


@dataclass
class ModelConfig:
    """The four LDSeg networks. Defaults are the reference 2D sizes of the method page."""

    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    # One width per label-encoder block; a 2x downsampling between consecutive blocks, so
    # len - 1 downsamplings in all (reference: 4, latent grid = 1/16 of the input per axis).
    label_encoder_widths: tuple[int, ...] = (16, 32, 64, 64, 32)
    image_encoder_stem: int = 16
    # One downsampling per image-encoder block; must equal the label encoder's count.
    image_encoder_widths: tuple[int, ...] = (32, 64, 64, 32)
    image_encoder_attention: bool = True
    denoiser_widths: tuple[int, ...] = (16, 32, 64)
    denoiser_attention: tuple[bool, ...] = (False, True, True)
    denoiser_res_blocks: int = 2
    # One upsampling per label-decoder block; must equal the label encoder's count.
    label_decoder_widths: tuple[int, ...] = (32, 64, 64, 32)
    latent_channels: int = 1
    image_latent_channels: int = 1
    norm: str = "group"  # "group" or "batch" (reference); BatchNorm misbehaves in eval mode
    # Reference: 0.2. With CPU-sized budgets (a few hundred steps) dropout 0 learned faster:
    # demo data, 1 thread, ~260 steps: validation Dice 0.74 vs 0.62 with 0.2.
    dropout: float = 0.0
    label_input: str = "onehot"  # "onehot" or "integer" (reference quirk: one channel)
    attention_head_channels: int = 16
    # "ldseg", or "baseline": a deterministic MONAI UNet trained through the same pipeline,
    # for same-data, same-grid, same-budget comparisons (the LDSeg fields above are then unused).
    architecture: str = "ldseg"
    # Baseline U-Net widths, one per resolution level: len - 1 downsamplings, as many as the
    # label encoder's by default so that both plan the same grid (2D 1.63 M vs LDSeg 1.83 M).
    baseline_widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    # Keys added after the first release, with what a config file without them meant.
    ADDED_KEYS: typing.ClassVar[dict[str, object]] = {
        "architecture": "ldseg", "baseline_widths": (16, 32, 64, 128, 256)}

    @property
    def downsample_factor(self) -> int:
        widths = self.baseline_widths if self.architecture == "baseline" else (
            self.label_encoder_widths)
        return 2 ** (len(widths) - 1)

    def validate(self) -> None:
        n_down = len(self.label_encoder_widths) - 1
        if self.spatial_dims not in (2, 3):
            raise LdsegError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.image_encoder_widths) != n_down or len(self.label_decoder_widths) != n_down:
            raise LdsegError(
                "image_encoder_widths and label_decoder_widths need one entry per downsampling "
                f"({n_down}, from label_encoder_widths)"
            )
        if len(self.denoiser_attention) != len(self.denoiser_widths):
            raise LdsegError("denoiser_attention needs one flag per denoiser width")
        if self.norm not in ("group", "batch"):
            raise LdsegError(f"norm must be 'group' or 'batch', got '{self.norm}'")
        if self.label_input not in ("onehot", "integer"):
            raise LdsegError(f"label_input must be 'onehot' or 'integer', got '{self.label_input}'")
        if self.num_classes < 2:
            raise LdsegError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.architecture not in ("ldseg", "baseline"):
            raise LdsegError(
                f"architecture must be 'ldseg' or 'baseline', got '{self.architecture}'"
            )
        if len(self.baseline_widths) < 2 or min(self.baseline_widths) < 1:
            raise LdsegError("baseline_widths needs at least two positive widths")


@dataclass
class DiffusionConfig:
    """Noise schedule, training-time denoised latent and default sampler settings."""

    schedule: str = "cosine"  # "cosine", "linear" or "quadratic"
    timesteps: int = 1000
    # "x0": (z_t - sqrt(1-a) eps_hat) / sqrt(a), consistent with the forward process;
    # "residual": z_t - eps_hat (reference quirk).
    denoised_rule: str = "x0"
    x0_min_divisor: float = 0.05  # clamps sqrt(alpha_bar) in training; see method pitfalls
    shared_noise: bool = False  # reference quirk: one eps repeated across the batch
    # Training timesteps: "late", density proportional to t, so the steps where the label
    # latent is mostly noise, and the image latent decides, are drawn more often; or "uniform"
    # over 0..T-1 (the method page). Knee slices: Dice lost at sigma 0.1 0.008-0.011 against
    # 0.022-0.045 (two seeds); on clean images knee 3D +0.008, GlaS -0.007 (means of two
    # seeds; benchmarks/results/timestep_sampling_2026-12-03.md). The whole accuracy benchmark
    # with late met the knee 3D Dice target that uniform had missed (0.915 against 0.919) and
    # halved the knee 2D loss at sigma 0.1 (0.019 against 0.043;
    # benchmarks/results/accuracy_bd1ae2c.md).
    timestep_sampling: str = "late"
    # `ldseg train` plans it by dimensionality (DEFAULT_SAMPLING_STEPS); this is the 2D one.
    sampling_steps: int = 15
    eta: float = 0.0  # 0 = DDIM, 1 = DDPM
    # Keys added after the first release, with what a config file without them meant: runs
    # from before timestep_sampling trained (and resume) with uniform timesteps.
    ADDED_KEYS: typing.ClassVar[dict[str, object]] = {"timestep_sampling": "uniform"}

    def validate(self) -> None:
        if self.schedule not in ("cosine", "linear", "quadratic"):
            raise LdsegError(f"unknown noise schedule '{self.schedule}'")
        if self.denoised_rule not in ("x0", "residual"):
            raise LdsegError(
                f"denoised_rule must be 'x0' or 'residual', got '{self.denoised_rule}'"
            )
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise LdsegError("timestep_sampling must be "
                             + " or ".join(f"'{s}'" for s in TIMESTEP_SAMPLINGS)
                             + f", got '{self.timestep_sampling}'")
        if self.sampling_steps < 1 or self.sampling_steps > self.timesteps:
            raise LdsegError(f"sampling steps must be within 1..{self.timesteps}")


@dataclass
class PreprocessConfig:
    """What turns a file into the network's input; saved so predictions are reproducible."""

    spatial_dims: int = 2  # of the model; 2 with a 3D dataset means slice-wise
    grid: tuple[int, ...] = ()  # the model grid; () = chosen from the data at train time
    slice_axis: int = -1  # array axis sliced when a 3D dataset is trained as 2D; -1 = auto
    keep_aspect: bool = True  # resize isotropically in physical units, then pad
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    data_spatial_dims: int = 2  # of the dataset files
    # What fills the grid around a resized image (data.preprocessing.pad_values): "border",
    # the mean of the image's edge, or "min", its darkest voxel (runs before the option).
    pad_value: str = "border"
    ADDED_KEYS: typing.ClassVar[dict[str, object]] = {"pad_value": "min"}

    def validate(self) -> None:
        if self.pad_value not in PAD_VALUES:
            raise LdsegError(f"pad_value must be one of {', '.join(PAD_VALUES)}, "
                             f"got '{self.pad_value}'")


# Training noise width by model dimensionality, as nnU-Net tunes its augmentation per 2D/3D
# configuration. On knee slices 1.0 cut the baseline's Dice lost at sigma 0.1 from 0.025 to
# 0.003-0.007; LDSeg's still fell off a cliff past the trained noise (loss 0.019, 0.79 at 0.14).
# Sigma 0.1 reaches the network as noise / contrast 1.05 on knee case 5, just past 1.0, and 2.0
# (with late timesteps) lost 0.001-0.004 over three seeds at the same clean Dice, no cliff at 0.14
# (timestep_sampling_2026-12-03.md). A 3D model sees the noise averaged over its 3D neighbourhood
# and stayed flat under noise at 1.0, while 2.0 cost knee 3D about 0.007 of clean Dice in a
# 20-minute budget (accuracy_noise2_2026-12-02.md, timestep_sampling_2026-12-03.md). All of it
# was measured with the old padding (pad_value "min"), whose dark band under noise was what the
# 2D models lost (knee2d_padding_2026-12-04.md); 2.0 against 1.0 is not re-measured since.
DEFAULT_NOISE_AUGMENT_STD: dict[int, float] = {2: 2.0, 3: 1.0}

# Sampling steps a new run keeps in its config (`ldseg predict` and validation use them unless
# told otherwise). Knee 3D, three seeds, 30-minute models, the same models sampled again: 2 steps
# against 15 scored Dice 0.913 against 0.908 (1 sample) and ECE 0.0163 against 0.0183 (mean of
# 8; lower in every seed); 1-3 steps were all better calibrated than 5 or 15. Knee slices and
# GlaS went the other way: 2 steps 0.938 and 0.929 against 0.945 and 0.942, ECE 0.0128 against
# 0.0069 (benchmarks/results/knee3d_steps_2026-12-04.md). Why 3D differs is not established.
# Measured on the benchmark's test case, the one there is: a choice by these results, not a
# validated rule for other 3D data.
DEFAULT_SAMPLING_STEPS: dict[int, int] = {2: 15, 3: 2}

# The share of the segmentation loss's gradient into the denoiser (TrainConfig's
# denoiser_segmentation_grad) a new LDSeg run keeps, 2D and 3D. In 3D the planned 1/4 latent
# stalled with all of it (the denoiser predicted no noise for 150-300 steps; Dice 0.914 and
# 0.904) and with a tenth did not (knee, four seeds: Dice 0.924, ECE 0.0074 against the
# U-Net's 0.923 and 0.0155; knee3d_denoiser_stall_2026-12-07.md). In 2D a tenth against all
# of it, seeds 0/1, 10 min (seg_grad_2d_2026-12-07.md): knee slices Dice 0.957/0.947 against
# 0.948/0.931 (the U-Net 0.954/0.953), label autoencoder (mean) 0.985 against 0.975, loss at
# sigma 0.4 0.024/0.032 against 0.037/0.122; GlaS 0.932/0.915 against 0.946/0.896 (a tie),
# ECE 0.0232/0.0422 against 0.0278/0.0755. Not measured with a 3D 1/8 latent (grids of 64+).
DEFAULT_DENOISER_SEG_GRAD: float = 0.1


@dataclass
class TrainConfig:
    """Optimisation, augmentation and bookkeeping."""

    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" decay to lr_min_ratio * lr, or "constant"
    lr_min_ratio: float = 0.05
    warmup_steps: int = 20
    weight_decay: float = 0.0
    epochs: int = 50
    iters_per_epoch: int = 50
    budget_minutes: float = 0.0  # > 0: stop by wall clock instead of epochs
    val_every: int = 1  # epochs
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] = ()
    val_max_cases: int = 8
    ema_decay: float = 0.999
    gamma_dice: float = 2.0
    lambda_noise: float = 1.0
    # The share of the segmentation loss's gradient that reaches the denoiser (and through it
    # the image encoder, and the label encoder's path through z_t) via eps_hat; the loss value,
    # the label decoder's gradient and the label encoder's direct path are unchanged. Through
    # the x0 estimate that gradient is multiplied by sqrt(1 - a) / sqrt(a), up to 20 at late
    # timesteps; on knee 3D with a 1/4 latent it was 1.4-21x the noise term's and all but
    # orthogonal to it, and the denoiser predicted nothing for up to 350 steps
    # (benchmarks/results/knee3d_denoiser_stall_2026-12-07.md). `ldseg train` plans it for
    # LDSeg (DEFAULT_DENOISER_SEG_GRAD, 0.1); this field default, all of it, is the method
    # page's and the value of runs saved before the field existed.
    denoiser_segmentation_grad: float = 1.0
    flip_axes: tuple[int, ...] = ()  # spatial axes mirrored at random
    intensity_augment: bool = True
    # Acquisition-like noise (training.augment.add_acquisition_noise), std drawn per sample from
    # [0, noise_augment_std] in z-score units. `ldseg train` plans it by dimensionality
    # (DEFAULT_NOISE_AUGMENT_STD); this field default is the 3D one.
    noise_augment_std: float = 1.0
    # The share of training samples that get that noise; the rest stay clean. Knee slices,
    # seeds 0/1: 0.5 against 1.0 scored 0.922/0.915 against 0.914/0.908 at sigma 0 (10 min),
    # but at 30 min 0.925 against 0.931/0.926, so the default stays 1.0
    # (benchmarks/results/accuracy_knee2d.md).
    noise_augment_prob: float = 1.0
    seed: int = 0
    num_threads: int = 0  # 0 = every core
    channels_last: bool = True
    # Recompute residual blocks in backward: far less activation memory (3D, large 2D grids)
    # for about a third more compute; the numbers are the same.
    gradient_checkpointing: bool = False
    ADDED_KEYS: typing.ClassVar[dict[str, object]] = {"gradient_checkpointing": False,
                                                      "noise_augment_prob": 1.0,
                                                      "denoiser_segmentation_grad": 1.0}

    def validate(self) -> None:
        if not 0 <= self.noise_augment_prob <= 1:
            raise LdsegError(
                f"noise_augment_prob must be within 0..1, got {self.noise_augment_prob}")
        if self.noise_augment_std < 0:
            raise LdsegError(f"noise_augment_std must be >= 0, got {self.noise_augment_std}")
        if self.gamma_dice < 0:
            raise LdsegError(f"gamma_dice must be >= 0, got {self.gamma_dice}")
        if self.lambda_noise < 0:
            raise LdsegError(f"lambda_noise must be >= 0, got {self.lambda_noise}")
        if not 0 <= self.denoiser_segmentation_grad <= 1:
            raise LdsegError("denoiser_segmentation_grad must be within 0..1, got "
                             f"{self.denoiser_segmentation_grad}")


@dataclass
class RunConfig:
    """Everything needed to rebuild a trained model and reproduce its predictions."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    class_names: tuple[str, ...] = ("background", "foreground")
    channel_names: tuple[str, ...] = ("image",)
    file_ending: str = ".png"
    dataset_name: str = ""
    ldseg_version: str = "0.1.0"

    def validate(self) -> None:
        self.model.validate()
        self.diffusion.validate()
        self.preprocess.validate()
        self.train.validate()


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _coerce(tp, value, where: str):
    """Check a JSON value against a dataclass field type and convert lists to tuples."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise LdsegError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise LdsegError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise LdsegError(f"{where}: unsupported union type")  # not used by the dataclasses
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LdsegError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise LdsegError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise LdsegError(f"{where}: unsupported type {tp}")


def from_dict(cls, data: dict, where: str = "config"):
    """Build a dataclass from JSON data; unknown or missing keys are errors."""
    if not isinstance(data, dict):
        raise LdsegError(f"{where}: expected an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    added = getattr(cls, "ADDED_KEYS", {})
    missing = sorted(names - set(data) - set(added))
    if unknown:
        raise LdsegError(f"{where}: unknown keys {unknown}")
    if missing:
        raise LdsegError(f"{where}: missing keys {missing}")
    data = {k: v for k, v in added.items() if k not in data} | data
    return cls(**{k: _coerce(hints[k], data[k], f"{where}.{k}") for k in names if k in data})


def save_json(data: dict, path: Path) -> None:
    """Write JSON atomically: a crash never leaves a half-written config."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def save_run_config(config: RunConfig, path: Path) -> None:
    save_json(to_dict(config), path)


def load_run_config(path: Path) -> RunConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LdsegError(f"{path}: config not found") from None
    except json.JSONDecodeError as exc:
        raise LdsegError(f"{path}: invalid JSON ({exc})") from None
    config = from_dict(RunConfig, data, where=str(path))
    config.validate()
    return config
