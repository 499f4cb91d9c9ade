"""How much memory a training run needs, known before anything big is allocated.

The activations a training step keeps for backward are measured on a small grid of the same
aspect (a real forward pass of the real networks, well under a second) and scaled by the voxel
count and the batch: every layer's activation grows with the grid, and attention runs on
memory-efficient kernels that grow linearly too. The small probe keeps a little more per voxel
than a large grid, which about covers the gradients alive during backward: against the peak
resident memory of real training steps on a CPU (`benchmarks/memory_estimate.py`) the estimate
was 1.06-1.24x the measured peak from 128x128 to 64^3 (0.78x, 0.1 GB low, at 32^3).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldseg.config import RunConfig
from ldseg.errors import LdsegError
from ldseg.model.baseline import build_model
from ldseg.model.networks import LDSeg

GB = 1024**3
# Convolution workspace, allocator slack, the loss's temporaries.
OVERHEAD_BYTES = int(0.1 * GB)
PROBE_VOXELS = {2: 64 * 64, 3: 24 * 24 * 32}


def probe_grid(grid: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """A grid of the same aspect with about PROBE_VOXELS voxels (the grid itself if smaller),
    each axis a multiple of the downsampling factor with at least 2 latent voxels."""
    scale = (PROBE_VOXELS[len(grid)] / math.prod(grid)) ** (1 / len(grid))
    if scale >= 1:
        return tuple(grid)
    return tuple(max(2 * multiple, round(g * scale / multiple) * multiple) for g in grid)


def saved_bytes(model: nn.Module, grid: tuple[int, ...], batch: int) -> int:
    """Bytes the autograd graph of one training step holds (each storage counted once)."""
    cfg = model.config
    storages: dict[int, int] = {}
    kept = []  # alive until the end, so that no storage address is reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        kept.append(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = torch.zeros(batch, cfg.in_channels, *grid)
        y = torch.zeros(batch, *grid, dtype=torch.uint8)
        if isinstance(model, LDSeg):
            t = torch.zeros(batch, dtype=torch.long)
            z0 = model.label_encoder(y)
            a = torch.full((batch, *([1] * (z0.ndim - 1))), 0.5)
            eps = torch.zeros_like(z0)
            z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
            eps_hat = model.denoiser(z_t, model.image_encoder(x), t)
            z_dn = (z_t - (1 - a).sqrt() * eps_hat) / a.sqrt().clamp_min(0.05)
            F.mse_loss(eps_hat, eps)  # the hook records what each operation saves
            logits = model.label_decoder(z_dn)
        else:
            logits = model(x)
        probs = torch.softmax(logits, 1)
        F.cross_entropy(logits, y.long()) + (probs * probs).mean()
    return sum(storages.values())


def training_bytes(config: RunConfig, batch: int, samples: int) -> tuple[int, int]:
    """(bytes on the compute device, bytes of the in-memory training data) for one process.

    Weights count six times: model, EMA, gradients, Adam's two moments, DDP's gradient buckets.
    """
    grid = tuple(config.preprocess.grid)
    small = probe_grid(grid, config.model.downsample_factor)
    with torch.random.fork_rng(devices=[]):  # building the probe must not move the seed
        model = build_model(config.model)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    params = sum(p.numel() for p in model.parameters()) * 4
    activations = saved_bytes(model, small, 1) * math.prod(grid) / math.prod(small) * batch
    data = samples * math.prod(grid) * (4 * config.model.in_channels + 1)
    return int(activations) + 6 * params + OVERHEAD_BYTES, data


def available_host_bytes() -> int:
    """MemAvailable, lowered to the cgroup's limit when a container has one."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def check_training_memory(config: RunConfig, batch: int, samples: int, *, where: Path,
                          processes: int = 1, device: torch.device | None = None) -> int:
    """Refuse a run that cannot fit, before loading data or building the model for real.

    `batch` is per process, `processes` the processes sharing this machine. Returns the
    estimated bytes per process.
    """
    compute, data = training_bytes(config, batch, samples)
    # On a GPU only the data stays in host memory. Loading concatenates the cases, so the data
    # is briefly held twice (before the activations exist).
    host = 0 if device is not None and device.type == "cuda" else compute
    grid = "x".join(str(g) for g in config.preprocess.grid)
    total = f"{batch * processes} over {processes} processes" if processes > 1 else str(batch)
    what = f"training on grid {grid} with batch {total}"
    hint = "lower --max-voxels (or --grid) or --batch-size"
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if compute > free:
            raise LdsegError(f"{where}: {what} needs about {compute / GB:.1f} GB on "
                             f"{device}, it has {free / GB:.1f} GB free; {hint}")
    needed, available = processes * (data + max(host, data)), available_host_bytes()
    if needed > available:
        raise LdsegError(f"{where}: {what} needs about {needed / GB:.1f} GB, the machine has "
                         f"{available / GB:.1f} GB available; {hint}")
    return compute + data
