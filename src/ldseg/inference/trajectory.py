"""The reverse diffusion of one image, step by step: what the report shows of how a
segmentation emerges from noise in the latent.

It runs the same sampler as `Segmenter.segment_array` (same seed, same starting noise), so the
last step is the segmentation `ldseg predict --samples 1` makes, here on the model grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldseg.data.imageio import Geometry
from ldseg.data.preprocessing import prepare_for_model
from ldseg.diffusion.sampler import sampling_timesteps
from ldseg.errors import LdsegError
from ldseg.inference.predictor import Segmenter
from ldseg.inference.sampling import segment_batch


@dataclass
class Trajectory:
    """One image's reverse diffusion on the model grid (one slice for a 2D model on 3D data)."""

    image: np.ndarray  # (C, *grid) float32, the normalised network input
    timesteps: list[int]  # the diffusion time t of each sampling step, descending
    latents: np.ndarray  # (S, c, *latent grid) float32: the latent after each step
    denoised: np.ndarray  # (S, c, *latent grid) float32: the clean-latent estimate of each step
    labels: np.ndarray  # (S, *grid) uint8: `latents` decoded
    denoised_labels: np.ndarray  # (S, *grid) uint8: `denoised` decoded
    slice_index: int | None  # which slice of the volume, for a 2D model on 3D data


def _decode(segmenter: Segmenter, latents: torch.Tensor, chunk: int = 4) -> np.ndarray:
    decoder = segmenter.model.label_decoder
    parts = [decoder(latents[i:i + chunk].to(segmenter.device)).argmax(1).to(torch.uint8).cpu()
             for i in range(0, len(latents), chunk)]
    return torch.cat(parts).numpy()


@torch.inference_mode()
def reverse_diffusion(
    segmenter: Segmenter,
    image: np.ndarray,
    geometry: Geometry | None = None,
    *,
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    slice_index: int | None = None,
) -> Trajectory:
    """Sample one segmentation of `image` ((C, *spatial), as read from a file) and keep every
    step's latent and its decoded label map. `slice_index` picks the slice for a 2D model on
    3D data (default: the middle one)."""
    cfg = segmenter.config
    pre = cfg.preprocess
    if image.ndim != pre.data_spatial_dims + 1 or image.shape[0] != cfg.model.in_channels:
        raise LdsegError(f"image of shape {image.shape} does not fit the model "
                         f"({cfg.model.in_channels} channel(s), {pre.data_spatial_dims}D)")
    geometry = geometry or Geometry.identity(pre.data_spatial_dims)
    prepared = prepare_for_model(image, None, geometry.spacing, pre, cfg.model.num_classes)
    n = len(prepared.images)
    index = n // 2 if slice_index is None else min(max(int(slice_index), 0), n - 1)
    x = prepared.images[index:index + 1].to(segmenter.device)
    steps = steps or cfg.diffusion.sampling_steps
    eta = cfg.diffusion.eta if eta is None else eta
    latents, denoised = [], []

    def keep(k: int, tau: int, z: torch.Tensor, z0_hat: torch.Tensor) -> None:
        latents.append(z[0].float().cpu())
        denoised.append(z0_hat[0].float().cpu())

    segment_batch(segmenter.model, segmenter.schedule, x, steps=steps, eta=eta, samples=1,
                  generator=torch.Generator().manual_seed(seed), on_step=keep)
    z, z0 = torch.stack(latents), torch.stack(denoised)
    return Trajectory(
        image=x[0].float().cpu().numpy(),
        timesteps=sampling_timesteps(segmenter.schedule.timesteps, steps),
        latents=z.numpy(),
        denoised=z0.numpy(),
        labels=_decode(segmenter, z),
        denoised_labels=_decode(segmenter, z0),
        slice_index=index if prepared.slice_axis is not None else None,
    )


__all__ = ["Trajectory", "reverse_diffusion"]
