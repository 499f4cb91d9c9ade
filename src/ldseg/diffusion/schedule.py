"""Noise schedules and the forward process, kept apart from the networks (as in diffusers).

alpha_bar is held in float64: with the cosine schedule alpha_bar(T-1) is about 2.4e-6, and
the x0 estimate divides by its square root.
"""

from __future__ import annotations

import math

import torch

from ldseg.config import DiffusionConfig
from ldseg.errors import LdsegError


def alpha_bar_table(kind: str, timesteps: int = 1000) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1, float64, strictly decreasing."""
    t = torch.arange(timesteps, dtype=torch.float64)
    if kind == "cosine":
        # Nichol & Dhariwal (2021), s = 0.008, evaluated at t/T so that alpha_bar_0 = 1.
        s = 0.008
        f = torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        return f / math.cos(s / (1 + s) * math.pi / 2) ** 2
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    elif kind == "quadratic":
        betas = torch.linspace(1e-4**0.5, 0.02**0.5, timesteps, dtype=torch.float64) ** 2
    else:
        raise LdsegError(f"unknown noise schedule '{kind}' (cosine, linear, quadratic)")
    return torch.cumprod(1.0 - betas, dim=0)


class NoiseSchedule:
    """The forward diffusion q(z_t | z_0) and the denoised-latent estimates used in training."""

    def __init__(self, kind: str = "cosine", timesteps: int = 1000) -> None:
        self.kind = kind
        self.timesteps = timesteps
        self.alpha_bar = alpha_bar_table(kind, timesteps)

    def _broadcast(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar.to(t.device)[t.long()].to(like.dtype)
        return a.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._broadcast(t, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * eps

    def denoised(
        self, z_t: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor,
        rule: str = "x0", min_divisor: float = 0.05,
    ) -> torch.Tensor:
        """The latent the label decoder sees during training.

        "x0" inverts the forward process, with sqrt(alpha_bar) clamped from below so that the
        loss does not explode at large t; "residual" is the reference's z_t - eps_hat.
        """
        if rule == "residual":
            return z_t - eps_hat
        a = self._broadcast(t, z_t)
        return (z_t - (1 - a).sqrt() * eps_hat) / a.sqrt().clamp_min(min_divisor)


def sample_timesteps(config: DiffusionConfig, batch: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Training timesteps for a batch. "uniform" keeps the random stream of earlier runs;
    "late" has density proportional to t (P(t >= T/2) = 3/4 instead of 1/2)."""
    if config.timestep_sampling == "uniform":
        return torch.randint(0, config.timesteps, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (config.timesteps * u.sqrt()).long().clamp_(max=config.timesteps - 1)
