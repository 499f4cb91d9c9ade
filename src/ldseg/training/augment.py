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
        std = cfg.noise_augment_std * torch.rand((b,) + (1,) * (x.ndim - 1), generator=generator)
        x = x + std * torch.randn(x.shape, generator=generator)
    return x, y
