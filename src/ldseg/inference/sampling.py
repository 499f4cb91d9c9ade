"""Segmenting a batch on the model grid: one image-encoder pass, N latent samples, decode.

The N samples of each image run batched together after a single image-encoder pass; the
decoder runs in chunks so that memory stays bounded in 3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldseg.diffusion.sampler import StepCallback, sample_latent
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.model.baseline import BaselineUNet
from ldseg.model.networks import LDSeg


@dataclass
class GridSegmentation:
    mean_probs: torch.Tensor  # (B, K, *grid): mean over samples of the class probabilities
    sample_labels: torch.Tensor | None  # (B, N, *grid) uint8, when N > 1


def segment_batch(
    model: LDSeg | BaselineUNet,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    samples: int = 1,
    generator: torch.Generator | None = None,
    decode_chunk: int = 8,
    on_step: StepCallback | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> GridSegmentation:
    """images: (B, C, *grid) normalised. Starting noise is drawn on the CPU from `generator`,
    so a seed gives the same segmentation on any device. The deterministic baseline runs once,
    whatever `samples` says: its softmax is the mean."""
    if isinstance(model, BaselineUNet):
        logits = model(images.contiguous(memory_format=memory_format))
        return GridSegmentation(torch.softmax(logits.float(), 1), None)
    b = images.shape[0]
    # The denoiser runs on a small latent where channels-last is slower (10x measured in 2D):
    # hand it a plain contiguous tensor whatever layout the encoder produced.
    z_image = model.image_encoder(images.contiguous(memory_format=memory_format)).contiguous()
    if samples > 1:
        z_image = z_image.repeat_interleave(samples, dim=0)
    latent_shape = (b * samples, model.config.latent_channels, *z_image.shape[2:])
    noise = torch.randn(latent_shape, generator=generator).to(images.device, z_image.dtype)

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.denoiser(z, z_image, t)

    z = sample_latent(denoise, schedule, noise, steps, eta, generator, on_step)
    per_image = z.reshape(b, samples, *z.shape[1:])
    chunk = max(1, decode_chunk // b)  # samples decoded at once, for every image of the batch
    probs_sum = torch.zeros(0)
    labels = []
    for s0 in range(0, samples, chunk):
        part = per_image[:, s0:s0 + chunk]
        n = part.shape[1]
        part = part.reshape(b * n, *z.shape[1:]).contiguous(memory_format=memory_format)
        logits = model.label_decoder(part).float()
        probs = torch.softmax(logits, 1).reshape(b, n, -1, *logits.shape[2:])
        if samples > 1:
            labels.append(probs.argmax(2).to(torch.uint8))
        probs_sum = probs.sum(1) if s0 == 0 else probs_sum + probs.sum(1)
    return GridSegmentation(probs_sum / samples, torch.cat(labels, 1) if labels else None)
