"""Batched augmentation on tensors: random flips and intensity changes.

Done on the whole batch in torch rather than with per-sample MONAI dictionary transforms: the
cases already sit on the model grid in memory, so this is a few tensor ops per step.
"""

from __future__ import annotations

import torch

from ldseg.config import TrainConfig


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, *spatial) normalised images, y: (B, *spatial) labels."""
    b = x.shape[0]
    spatial_dims = y.ndim - 1
    x, y = x.clone(), y.clone()
    for axis in cfg.flip_axes:
        if axis >= spatial_dims:
            continue
        flip = torch.rand(b, generator=generator) < 0.5
        if flip.any():
            x[flip] = x[flip].flip(axis + 2)
            y[flip] = y[flip].flip(axis + 1)
    if cfg.intensity_augment:
        shape = (b, x.shape[1]) + (1,) * spatial_dims
        scale = 1 + 0.15 * (2 * torch.rand(shape, generator=generator) - 1)
        shift = 0.15 * (2 * torch.rand(shape, generator=generator) - 1)
        x = x * scale + shift
    if cfg.noise_augment_std > 0:
        x = add_acquisition_noise(x, cfg.noise_augment_std, generator, cfg.noise_augment_prob)
    return x, y


def add_acquisition_noise(x: torch.Tensor, max_std: float, generator: torch.Generator,
                          prob: float = 1.0) -> torch.Tensor:
    """Gaussian noise as a noisy scan would reach the network: per sample, with probability
    `prob`, a std s drawn from [0, max_std] (z-score units), added, then the result scaled by
    1 / sqrt(1 + s^2); the other samples stay clean.

    The scaling is what the z-scoring of preprocessing does to an image whose noise was added
    before it: the noisy image has variance 1 + s^2 and is brought back to 1, so the anatomy's
    contrast shrinks as the noise grows. Noise alone, at full contrast, is an easier problem
    than the one a noisy input poses (ldseg robustness: knee MRI slices, sigma 0.1 of the
    intensity range, reach the network as contrast 0.65 and noise 0.75)."""
    std = max_std * torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator)
    if prob < 1:  # drawn only then, so that prob 1 keeps the random stream of earlier runs
        std = std * (torch.rand(std.shape, generator=generator) < prob)
    return (x + std * torch.randn(x.shape, generator=generator)) * torch.rsqrt(1 + std**2)
