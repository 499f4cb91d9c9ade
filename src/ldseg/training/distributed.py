"""Several processes (GPUs, machines) under torchrun, with PyTorch DistributedDataParallel.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and ldseg
runs as one process. Every rank draws the same seeded global batch (indices, augmentation, noise,
timesteps) and keeps its own slice, so N ranks with B/N samples compute what one process with B
samples computes: the data order never depends on the number of processes. The batch Dice is
summed over the whole global batch (a mean of per-rank Dice values would be another loss).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ldseg.errors import LdsegError
from ldseg.model.networks import LDSeg


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks; the defaults are a single process on the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's slice of a global batch of n samples (n divisible by world_size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise LdsegError(f"--batch-size {batch_size} cannot be split evenly over "
                             f"{self.world_size} processes; use a multiple of {self.world_size}")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel (gradients averaged over ranks).

        LDSeg's four networks are wrapped one by one because the training step calls them one
        by one; the wrappers share their parameters with `model`, whose state dict
        (saved in checkpoints) is unchanged.
        """
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        if not isinstance(model, LDSeg):  # one forward (the baseline U-Net)
            return DistributedDataParallel(model, device_ids=ids)
        nets = nn.Module()
        for name, child in model.named_children():
            setattr(nets, name, DistributedDataParallel(child, device_ids=ids))
        return nets

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """Rank 0's clock and any rank's stop request: every rank stops at the same step and
        follows the same learning-rate schedule in --budget-minutes mode."""
        if not self.enabled:
            return elapsed, stop
        t = torch.tensor([elapsed if self.is_main else 0.0, float(stop)], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t)
        return float(t[0]), bool(t[1] > 0)

    def mean(self, values: list[float]) -> list[float]:
        """The mean over ranks (of per-rank loss values, for the log)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise LdsegError(f"environment variable {name}={value!r} is not an integer "
                         "(it is set by torchrun)") from None


def rank_from_env() -> int:
    return _env_int("RANK", 0)


@contextmanager
def session(use_cuda: bool = True) -> Iterator[Dist]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU) for the duration.

    One process per GPU: rank r uses cuda:LOCAL_RANK. `use_cuda=False` (prediction, which only
    needs barriers) always takes gloo and leaves the device choice to the caller.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield Dist()
        return
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise LdsegError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise LdsegError(f"WORLD_SIZE={world} but {name} is not set; start several "
                             "processes with torchrun")
    cuda = use_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                device_id=device if cuda else None)
    try:
        yield Dist(rank, world, local_rank, _env_int("LOCAL_WORLD_SIZE", 1), device)
    finally:
        if created:
            dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients of all ranks: each rank's share of
    the sum then gets the gradient of the global quantity (torch.distributed.nn's version of
    this is deprecated)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 (autograd API)
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 (autograd API)
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalDiceLoss:
    """MONAI's DiceLoss(include_background, softmax, to_onehot_y, batch=True) with its sums
    taken over the global batch. The all-reduce is differentiable: its backward sums the
    gradients of all ranks, and DDP's average then gives exactly the one-process gradient."""

    smooth = 1e-5  # MONAI's smooth_nr and smooth_dr

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, 1)
        onehot = F.one_hot(target[:, 0].long(), self.num_classes).movedim(-1, 1).to(probs.dtype)
        dims = [0, *range(2, logits.ndim)]
        sums = torch.stack([(probs * onehot).sum(dims), onehot.sum(dims), probs.sum(dims)])
        inter, ground, pred = _SumOverRanks.apply(sums)
        return (1 - (2 * inter + self.smooth) / (ground + pred + self.smooth)).mean()
