"""Which part of LDSeg's one loss trains the denoiser: gradient norms per loss term.

LDSeg's loss is CE + gamma (1 - Dice) on the decoded denoised latent plus lambda times the
noise MSE. The denoiser gets gradient from both: directly from the MSE, and from the
segmentation terms through z_dn = (z_t - sqrt(1 - a) eps_hat) / sqrt(a), which multiplies
it by sqrt(1 - a) / sqrt(a) (up to 1 / x0_min_divisor = 20 at late timesteps). When the
segmentation part dominates and points elsewhere, Adam's step follows it and the noise MSE
stays near 1 (the denoiser predicts nothing): the stall seen on knee 3D with a 1/4 latent.

    python benchmarks/loss_gradients.py DATASET --config RUN/config.json
        [--steps 150] [--every 10] [--run-steps N] [--noise-weight L] [--denoiser-seg-grad W]
        [--output FILE.csv]

Trains a fresh model from the run's config (same seed, data, augmentation) for --steps steps,
exactly as `ldseg train` would, and every --every steps records, on that step's batch:
the noise MSE, the segmentation loss, the norms of the gradients of the segmentation part and
of the lambda-weighted noise part on the denoiser's parameters, their ratio, and the cosine
between the segmentation gradient on eps_hat (negated) and the noise error eps - eps_hat (near
1 when the segmentation loss asks the denoiser for the true noise, near 0 when it asks for
something else). The recording takes extra backward passes and changes no number of the
training itself.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ldseg.config import load_run_config
from ldseg.data.dataset import list_cases, load_dataset_spec
from ldseg.errors import LdsegError
from ldseg.files import atomic_write
from ldseg.training.loss import BaselineLoss, LDSegLoss
from ldseg.training.trainer import Trainer, split_cases

FIELDS = ("step", "noise_mse", "segmentation", "grad_segmentation", "grad_noise",
          "ratio", "cosine", "eps_hat_std")


class GradientRecorder:
    """Stands in for the trainer's LDSegLoss: returns exactly its value, and on every
    `every`-th call also measures what each term asks of the denoiser."""

    def __init__(self, loss: LDSegLoss, denoiser: torch.nn.Module, every: int) -> None:
        self.loss, self.denoiser, self.every = loss, denoiser, every
        self.calls, self.rows = 0, []

    def __call__(self, logits: torch.Tensor, label: torch.Tensor, eps: torch.Tensor,
                 eps_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = self.loss(logits, label, eps, eps_hat)
        self.calls += 1
        if (self.calls - 1) % self.every == 0:
            segmentation, _ = BaselineLoss.__call__(self.loss, logits, label)
            noise = self.loss.lam * F.mse_loss(eps_hat, eps)
            params = [p for p in self.denoiser.parameters() if p.requires_grad]
            g_seg = _norm(torch.autograd.grad(segmentation, params, retain_graph=True,
                                              allow_unused=True))
            g_noise = _norm(torch.autograd.grad(noise, params, retain_graph=True,
                                                allow_unused=True))
            (on_eps,) = torch.autograd.grad(segmentation, eps_hat, retain_graph=True,
                                            allow_unused=True)
            error = (eps - eps_hat).detach().flatten()
            cosine = (float("nan") if on_eps is None
                      else F.cosine_similarity(-on_eps.flatten(), error, dim=0).item())
            self.rows.append({
                "step": self.calls, "noise_mse": parts["noise_mse"],
                "segmentation": segmentation.item(), "grad_segmentation": g_seg,
                "grad_noise": g_noise, "ratio": g_seg / g_noise if g_noise else float("inf"),
                "cosine": cosine, "eps_hat_std": eps_hat.detach().std().item(),
            })
        return total, parts


def _norm(grads: tuple[torch.Tensor | None, ...]) -> float:
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None) ** 0.5)


def record(dataset: Path, config_path: Path, steps: int, every: int,
           run_steps: int | None = None, **train_overrides: float) -> list[dict[str, float]]:
    """Train `steps` steps from the config (with TrainConfig fields overridden, e.g.
    lambda_noise=10) and return the recorded rows. The learning rate follows the schedule of
    a run of `run_steps` steps (default: the config's epochs x iters_per_epoch), so that the
    first steps of a long run are measured as that run takes them."""
    config = load_run_config(config_path)
    if config.model.architecture != "ldseg":
        raise LdsegError(f"{config_path}: a baseline run has no denoiser to measure")
    if train_overrides:
        config = replace(config, train=replace(config.train, **train_overrides))
        config.validate()
    spec = load_dataset_spec(dataset)
    tc = config.train
    train_cases, _ = split_cases(list_cases(spec), tc.val_fraction, tc.val_cases, tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), train_cases, [], progress_bar=False)
        recorder = GradientRecorder(trainer.loss_fn, trainer.model.denoiser, every)
        trainer.loss_fn = recorder
        run_length = run_steps or tc.epochs * tc.iters_per_epoch
        for _ in range(steps):
            trainer.train_step(trainer.state.step / run_length)
    return recorder.rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="a run's config.json")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--run-steps", type=int,
                        help="length of the run whose learning-rate schedule the steps follow "
                             "(default: the config's epochs x iters-per-epoch; give a "
                             "budgeted run's step count)")
    parser.add_argument("--noise-weight", type=float, help="lambda (default: the config's)")
    parser.add_argument("--denoiser-seg-grad", type=float,
                        help="as `ldseg train --denoiser-seg-grad` (default: the config's)")
    parser.add_argument("--output", type=Path, help="CSV of the recorded rows")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.every < 1:
            raise LdsegError("--steps and --every must be at least 1")
        overrides = {k: v for k, v in (("lambda_noise", args.noise_weight),
                                       ("denoiser_segmentation_grad", args.denoiser_seg_grad))
                     if v is not None}
        rows = record(args.dataset, args.config, args.steps, args.every, args.run_steps,
                      **overrides)
    except LdsegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(" ".join(f"{name:>17}" for name in FIELDS))
    for row in rows:
        print(" ".join(f"{row[name]:>17.4g}" for name in FIELDS))
    if args.output:
        with atomic_write(args.output) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
