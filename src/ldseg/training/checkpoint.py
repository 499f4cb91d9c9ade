"""Checkpoints: weights in safetensors, everything else in JSON. Loading never runs code.

A model file carries its run config in the safetensors metadata, so one file is enough to
rebuild the model; the training state (optimizer, EMA, RNG, counters) sits beside it for
`--resume`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ldseg.config import RunConfig, from_dict, to_dict
from ldseg.errors import LdsegError
from ldseg.files import atomic_write


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: catches corruption that still parses."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items()}
    meta["sha256"] = content_hash(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise LdsegError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LdsegError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    expected = metadata.get("sha256")
    if expected is None:
        raise LdsegError(f"{path}: checkpoint has no content hash (not written by ldseg?)")
    if content_hash(tensors) != expected:
        raise LdsegError(f"{path}: corrupt checkpoint (content hash mismatch)")
    return tensors, metadata


def save_model(model: torch.nn.Module, config: RunConfig, path: Path, info: dict) -> None:
    """Inference weights plus the config that rebuilds them."""
    meta = {"ldseg_config": json.dumps(to_dict(config)), "info": json.dumps(info)}
    atomic_save_tensors(model.state_dict(), path, meta)


def load_model_file(path: Path) -> tuple[RunConfig, dict[str, torch.Tensor], dict]:
    tensors, metadata = load_tensors(path)
    if "ldseg_config" not in metadata:
        raise LdsegError(f"{path}: not an ldseg model file (no config in its metadata)")
    try:
        config = from_dict(RunConfig, json.loads(metadata["ldseg_config"]), where=str(path))
        info = json.loads(metadata.get("info", "{}"))
    except json.JSONDecodeError as exc:
        raise LdsegError(f"{path}: malformed config in checkpoint ({exc})") from None
    config.validate()
    return config, tensors, info


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Strict load with a one-line error instead of PyTorch's multi-line one."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LdsegError(
            f"{where}: weights do not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise LdsegError(f"{where}: weight '{k}' has shape {tuple(v.shape)}, "
                             f"expected {tuple(expected[k].shape)}")
    module.load_state_dict(tensors)
