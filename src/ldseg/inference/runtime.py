"""Where and how the networks run: device choice, memory layout, mixed precision, compilation.

Kept apart from the sampling maths so that every speed-up here is checked to leave the
segmentation unchanged (tests/test_speed_paths.py) and measured in benchmarks/speed.py.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ldseg.errors import LdsegError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise LdsegError(f"--device {name}: not a device name ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LdsegError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    return device


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def full_resolution_parts(model: nn.Module) -> list[nn.Module]:
    """The networks that run at image resolution (all of a baseline U-Net)."""
    parts = [getattr(model, n) for n in ("label_encoder", "image_encoder", "label_decoder")
             if hasattr(model, n)]
    return parts or [model]


def prepare_for_inference(model: nn.Module, *, compile: bool = False) -> torch.memory_format:
    """Put the full-resolution networks in channels-last; return the layout to feed them.

    oneDNN's convolutions run 1.7x faster channels-last at 512x512 (measured), but the
    denoiser works on a tiny latent where channels-last was 10x slower, so only the image
    encoder and label decoder are converted. `compile` wraps them in torch.compile with
    weight freezing (prepacked oneDNN weights, fused norm/activation); it pays off for long
    folders only: the first call compiles for tens of seconds.
    """
    fmt = channels_last_format(model.config.spatial_dims)
    for part in full_resolution_parts(model):
        part.to(memory_format=fmt)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        for name in ("image_encoder", "label_decoder"):
            if hasattr(model, name):
                setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
    return fmt


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX); else it emulates it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private check: absent in some builds
        return False


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when asked for; a no-op otherwise. Never the default: labels can
    differ from fp32 where two classes are close (knee slices: Dice 0.9220 vs 0.9222). On a
    CPU with bf16 units it is faster (2D 512x512 reference model: 0.65 -> 0.49 s per image,
    benchmarks/results/speed.md); without them it is slower than fp32, hence the warning."""
    if not bf16:
        return contextlib.nullcontext()
    if device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("this CPU has no bf16 units: --bf16 will be slower than fp32",
                      stacklevel=2)
    return torch.autocast(device.type, dtype=torch.bfloat16)
