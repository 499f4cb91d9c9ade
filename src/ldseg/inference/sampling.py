"""Segmenting a batch on the model grid: one image-encoder pass, N latent samples, decode.

The N samples of each image run batched together after a single image-encoder pass; the
full-resolution networks run in chunks so that memory stays bounded, whatever the batch.
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
    full_res_voxels: int = 512 * 512,
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
    voxels = images.shape[2:].numel()
    # The full-resolution networks run on a few images at a time (at most `full_res_voxels`
    # voxels per call): the same numbers, but peak memory no longer grows with the batch
    # (at 512x512 RGB, batch 4: 1.08 -> see benchmarks/results/speed.md) and the working set
    # stays in cache. The denoiser still sees the whole batch on its small latent.
    per_call = max(1, full_res_voxels // voxels)
    # Each chunk is brought to the encoder's layout on its own: a copy of the whole batch
    # would live through the decoder's peak (13 MB at 512x512 RGB, batch 4).
    # The denoiser runs on a small latent where channels-last is slower (10x measured in 2D):
    # hand it a plain contiguous tensor whatever layout the encoder produced.
    z_image = torch.cat([model.image_encoder(images[i:i + per_call].contiguous(
        memory_format=memory_format)) for i in range(0, b, per_call)]).contiguous()
    if samples > 1:
        z_image = z_image.repeat_interleave(samples, dim=0)
    latent_shape = (b * samples, model.config.latent_channels, *z_image.shape[2:])
    noise = torch.randn(latent_shape, generator=generator).to(images.device, z_image.dtype)

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.denoiser(z, z_image, t)

    z = sample_latent(denoise, schedule, noise, steps, eta, generator, on_step)
    # Decode image-major (sample index fastest), a few latents per call; sum each image's
    # sample probabilities as they come, so only one chunk of full-resolution logits lives.
    probs_sum: torch.Tensor | None = None
    labels = torch.empty((b * samples, *images.shape[2:]), dtype=torch.uint8,
                         device=images.device) if samples > 1 else None
    for start in range(0, b * samples, per_call):
        part = z[start:start + per_call].contiguous(memory_format=memory_format)
        probs = torch.softmax(model.label_decoder(part).float(), 1)
        if probs_sum is None:
            probs_sum = probs.new_zeros((b, *probs.shape[1:]))
        owner = torch.arange(start, start + part.shape[0], device=probs.device) // samples
        probs_sum.index_add_(0, owner, probs)
        if labels is not None:
            labels[start:start + part.shape[0]] = probs.argmax(1)
    assert probs_sum is not None
    sample_labels = labels.reshape(b, samples, *labels.shape[1:]) if labels is not None else None
    return GridSegmentation(probs_sum / samples, sample_labels)
