"""DDIM (eta = 0) / DDPM (eta = 1) sampling in the latent, with per-sample re-standardization.

Written by hand rather than with MONAI's schedulers: those default to clip_sample=True (wrong
for latents), cannot re-standardize per sample, and their last step at alpha_bar = 1 is the
0/0 the method page warns about. Here the last step simply returns the x0 estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.model.networks import standardize

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t) -> eps_hat
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (k, tau, z, z0_hat)


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """S timesteps evenly spaced over 0..T-1, descending, starting at T-1.

    ("trailing" spacing: the first step sees pure noise and every step does work; the step
    after the last one lands on the clean latent.)
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be within 1..{timesteps}")
    return [round(timesteps - k * timesteps / steps) - 1 for k in range(steps)]


def sample_latent(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse process from `noise` (B, c, *grid); returns the final latent.

    Fresh noise for eta > 0 comes from `generator`, so a seed fixes the whole trajectory.
    """
    taus = sampling_timesteps(schedule.timesteps, steps)
    alpha_bar = schedule.alpha_bar
    z = standardize(noise)
    for k, tau in enumerate(taus):
        t = torch.full((z.shape[0],), tau, dtype=torch.long, device=z.device)
        eps_hat = denoise(z, t)
        a = float(alpha_bar[tau])
        z0_hat = (z - (1 - a) ** 0.5 * eps_hat) / a**0.5
        if k == len(taus) - 1:
            z = z0_hat  # a_prev = 1: the DDPM sigma would be 0/0 here
        else:
            a_prev = float(alpha_bar[taus[k + 1]])
            sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
            z = a_prev**0.5 * z0_hat + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps_hat
            if sigma > 0:
                xi = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu")
                z = z + sigma * xi.to(z.device)
        z = standardize(z)
        if on_step is not None:
            on_step(k, tau, z, z0_hat)
    return z
