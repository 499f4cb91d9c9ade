"""End-to-end training of the four LDSeg networks by one loss.

Per step: z_l0 = f_le(y), z_i = f_ie(X), z_t = forward noising, eps_hat = eps_theta(z_t, z_i, t),
z_dn = denoised latent, logits = f_ld(z_dn); loss = CE + gamma (1 - Dice) + lambda MSE(eps).
Every `val_every` epochs the EMA model segments the validation cases by actually sampling.
The deterministic baseline (`architecture="baseline"`) goes through the same loop with
CE + gamma (1 - Dice) on its logits.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldseg.config import RunConfig, save_run_config, to_dict
from ldseg.data.dataset import Case, check_dataset, list_cases, load_case
from ldseg.data.imageio import image_info
from ldseg.data.preprocessing import PreparedCase, finite_image, prepare_for_model
from ldseg.diffusion.schedule import NoiseSchedule, sample_timesteps
from ldseg.errors import LdsegError
from ldseg.files import atomic_write, check_output_folder
from ldseg.inference.runtime import channels_last_format, full_resolution_parts
from ldseg.inference.sampling import segment_batch
from ldseg.model.baseline import build_model
from ldseg.training.augment import augment_batch
from ldseg.training.checkpoint import atomic_save_tensors, load_tensors, save_model
from ldseg.training.distributed import Dist, GlobalDiceLoss, session
from ldseg.training.loss import BaselineLoss, LDSegLoss
from ldseg.training.memory import check_training_memory

MODEL_BEST = "model_best.safetensors"
MODEL_LAST = "model_last.safetensors"
TRAIN_STATE = "train_state.safetensors"
LOG_CSV = "log.csv"
LOSSES_CSV = "losses.csv"


def split_cases(cases: list[Case], fraction: float, names: tuple[str, ...], seed: int):
    """Case-level split (never slices of one case on both sides)."""
    if names:
        unknown = sorted(set(names) - {c.name for c in cases})
        if unknown:
            raise LdsegError(f"validation cases not in the dataset: {unknown}")
        return [c for c in cases if c.name not in names], [c for c in cases if c.name in names]
    n_val = 0 if fraction <= 0 else max(1, round(fraction * len(cases)))
    if n_val >= len(cases):
        raise LdsegError(f"{len(cases)} case(s) leave none for training after the validation split")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def prepare(case: Case, config: RunConfig, allow_nan: bool = False) -> PreparedCase:
    image, label, geometry = load_case(case)
    image = finite_image(image, str(case.image_files[0]), allow_nan)
    return prepare_for_model(image, label, geometry.spacing, config.preprocess,
                             config.model.num_classes)


@dataclass
class TrainState:
    """Counters that, with the RNG states and weights, make a resumed run identical."""

    step: int = 0
    epoch: int = 0
    elapsed: float = 0.0
    best_dice: float = -1.0
    best_epoch: int = -1
    cursor: int = 0
    history: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # one per step, for LOSSES_CSV


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass; in the backward pass only `factor` of the gradient reaches x."""
    if factor == 1.0:
        return x
    frozen = x.detach()
    return frozen + factor * (x - frozen)  # exactly x's values: x - frozen is 0


def foreground_dice(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> list[float]:
    """Dice per foreground class over all voxels given; NaN when both are empty."""
    out = []
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        denom = int(p.sum() + r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path,
                 train_cases: list[Case], val_cases: list[Case], progress_bar: bool = True,
                 *, allow_nan: bool = False, dist: Dist | None = None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.dist = dist or Dist()  # one process unless started by torchrun
        tc = config.train
        torch.manual_seed(tc.seed)
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.model = build_model(config.model).to(self.dist.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.memory_format = torch.preserve_format
        if tc.channels_last:
            self.memory_format = channels_last_format(config.model.spatial_dims)
            for net in (self.model, self.ema):  # not the denoiser: see inference.runtime
                for part in full_resolution_parts(net):
                    part.to(memory_format=self.memory_format)
        if tc.gradient_checkpointing and hasattr(self.model, "set_gradient_checkpointing"):
            self.model.set_gradient_checkpointing(True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)
        self.schedule = NoiseSchedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.loss_fn = (BaselineLoss(tc.gamma_dice) if config.model.architecture == "baseline"
                        else LDSegLoss(tc.gamma_dice, tc.lambda_noise))
        self.net = self.dist.wrap(self.model)  # DDP under torchrun, else the model itself
        if self.dist.enabled:  # the batch Dice of the global batch, not of each rank's share
            self.loss_fn.dice = GlobalDiceLoss(config.model.num_classes)
        self.state = TrainState()
        self.stop_requested = False
        loading = tqdm(train_cases, desc="loading", leave=False, disable=not progress_bar)
        prepared = [prepare(c, config, allow_nan) for c in loading]
        self.images = torch.cat([p.images for p in prepared])
        self.labels = torch.cat([p.labels for p in prepared])
        self.dist.check_batch(min(tc.batch_size, len(self.images)))
        self.val = [(c.name, prepare(c, config, allow_nan))
                    for c in val_cases[: tc.val_max_cases]]
        self.perm = torch.randperm(len(self.images), generator=self.generator)

    # ---- one optimisation step -------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = min(self.config.train.batch_size, len(self.images))
        idx = []
        while len(idx) < bs:
            if self.state.cursor >= len(self.perm):
                self.perm = torch.randperm(len(self.images), generator=self.generator)
                self.state.cursor = 0
            idx.append(int(self.perm[self.state.cursor]))
            self.state.cursor += 1
        return self.images[idx], self.labels[idx]

    def lr_at(self, progress: float) -> float:
        tc = self.config.train
        warm = min(1.0, (self.state.step + 1) / max(1, tc.warmup_steps))
        if tc.lr_schedule == "constant":
            return tc.lr * warm
        floor = tc.lr * tc.lr_min_ratio
        return warm * (floor + (tc.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def train_step(self, progress: float) -> dict[str, float]:
        cfg, dcfg, tc = self.config, self.config.diffusion, self.config.train
        x, y = self.next_batch()
        x, y = augment_batch(x, y, cfg.train, self.generator)
        # All random numbers are drawn for the global batch on every rank; each keeps its shard.
        b, shard, device = x.shape[0], self.dist.shard(x.shape[0]), self.dist.device
        x = x[shard].to(device).contiguous(memory_format=self.memory_format)
        y = y[shard].to(device)
        if cfg.model.architecture == "baseline":  # deterministic U-Net: logits from the image
            self.model.train()
            loss, parts = self.loss_fn(self.net(x), y)
        else:
            t = sample_timesteps(dcfg, b, self.generator)[shard].to(device)
            self.model.train()
            z0 = self.net.label_encoder(y)
            z_image = self.net.image_encoder(x)
            noise_shape = (1, *z0.shape[1:]) if dcfg.shared_noise else (b, *z0.shape[1:])
            eps = torch.randn(noise_shape, generator=self.generator)
            eps = (eps if dcfg.shared_noise else eps[shard]).to(device).expand_as(z0)
            z_t = self.schedule.add_noise(z0, eps, t)
            eps_hat = self.net.denoiser(z_t, z_image, t)
            # The segmentation loss reaches the denoiser through eps_hat, scaled (TrainConfig).
            eps_seg = scale_gradient(eps_hat, tc.denoiser_segmentation_grad)
            z_dn = self.schedule.denoised(z_t, eps_seg, t, dcfg.denoised_rule,
                                          dcfg.x0_min_divisor)
            logits = self.net.label_decoder(z_dn)
            loss, parts = self.loss_fn(logits, y, eps, eps_hat)
        # The global batch's values (the mean over ranks), so every rank takes the same decision.
        loss_value, *values = self.dist.mean([loss.item(), *parts.values()])
        parts = dict(zip(parts, values, strict=True))
        if not math.isfinite(loss_value):
            raise LdsegError(
                f"loss became {loss_value} at step {self.state.step}; the last good checkpoint "
                f"in {self.run_dir} is kept (try a lower --lr)"
            )
        lr = self.lr_at(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.update_ema()
        self.state.step += 1
        return {"loss": loss_value, "lr": lr, **parts}

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm-up of the decay: with a few hundred CPU steps a fixed 0.999 would still be
        # mostly the random initialisation.
        decay = min(self.config.train.ema_decay, (1 + self.state.step) / (10 + self.state.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    # ---- validation --------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> list[float]:
        """Mean over validation cases of the per-class Dice on the model grid, by sampling."""
        cfg = self.config
        self.ema.eval()
        per_case = []
        rank, world = self.dist.rank, self.dist.world_size
        for _, case in self.val[rank::world]:  # each rank segments its share of the cases
            preds = []
            gen = torch.Generator().manual_seed(cfg.train.seed)
            for start in range(0, len(case.images), 16):
                x = case.images[start:start + 16].to(self.dist.device)
                x = x.contiguous(memory_format=self.memory_format)
                probs = segment_batch(
                    self.ema, self.schedule, x, steps=cfg.diffusion.sampling_steps,
                    eta=cfg.diffusion.eta, samples=1, generator=gen,
                    memory_format=(torch.contiguous_format if self.memory_format is
                                   torch.preserve_format else self.memory_format),
                ).mean_probs
                preds.append(probs.argmax(1).cpu())
            per_case.append(foreground_dice(torch.cat(preds), case.labels, cfg.model.num_classes))
        ordered: list = [None] * len(self.val)
        for r, part in enumerate(self.dist.gather(per_case)):
            ordered[r::world] = part
        per_case = ordered
        return np.nanmean(np.array(per_case, dtype=float), axis=0).tolist() if per_case else []

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, best: bool) -> None:
        if not self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            return
        info = {"epoch": self.state.epoch, "step": self.state.step,
                "best_dice": self.state.best_dice}
        save_model(self.ema, self.config, self.run_dir / MODEL_LAST, info)
        if best:
            save_model(self.ema, self.config, self.run_dir / MODEL_BEST, info)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt = self.optimizer.state_dict()
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["data.perm"] = self.perm
        state = {**self.state.__dict__, "param_groups": opt["param_groups"]}
        meta = {"state": json.dumps(state), "config": json.dumps(to_dict(self.config))}
        atomic_save_tensors(tensors, self.run_dir / TRAIN_STATE, meta)

    def restore(self) -> None:
        path = self.run_dir / TRAIN_STATE
        tensors, meta = load_tensors(path)
        try:
            state = json.loads(meta["state"])
        except (KeyError, json.JSONDecodeError):
            raise LdsegError(f"{path}: training state is missing or malformed") from None
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.model.load_state_dict(model_sd)
        self.ema.load_state_dict(ema_sd)
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        self.optimizer.load_state_dict({"state": opt_state,
                                        "param_groups": state.pop("param_groups")})
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.perm = tensors["data.perm"]
        self.state = TrainState(**state)

    # ---- the loop ----------------------------------------------------------------------------
    def request_stop(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.stop_requested = True

    def run(self, progress_bar: bool = True) -> TrainState:
        tc = self.config.train
        budget = tc.budget_minutes * 60.0
        total_steps = tc.epochs * tc.iters_per_epoch
        old_handlers = {s: signal.signal(s, self.request_stop)
                        for s in (signal.SIGINT, signal.SIGTERM)}
        # In budget mode the bar counts seconds (so its ETA is the budget's end); the step rate
        # goes into the postfix.
        fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s "
               "[{elapsed}<{remaining}{postfix}]") if budget else None
        bar = tqdm(total=int(budget) if budget else total_steps, initial=0 if budget else
                   self.state.step, unit="step", disable=not progress_bar, desc="train",
                   dynamic_ncols=True, bar_format=fmt)
        start = time.monotonic() - self.state.elapsed
        running: dict[str, float] = {}
        try:
            if self.dist.is_main:  # after the handlers: from here on a signal ends in a checkpoint
                save_run_config(self.config, self.run_dir / "config.json")
            while True:
                # Rank 0's clock and any rank's signal: all ranks stop after the same step.
                self.state.elapsed, stop = self.dist.agree(self.state.elapsed,
                                                           self.stop_requested)
                done_by_time = budget and self.state.elapsed >= budget
                done_by_steps = not budget and self.state.step >= total_steps
                if done_by_time or done_by_steps or stop:
                    break
                progress = self.state.elapsed / budget if budget else self.state.step / total_steps
                parts = self.train_step(progress)
                for k, v in parts.items():
                    running[k] = running.get(k, 0.0) + v
                running["n"] = running.get("n", 0) + 1
                self.state.losses.append(parts["loss"])
                self.state.elapsed = time.monotonic() - start
                if budget:
                    bar.n = min(int(self.state.elapsed), int(budget))
                    bar.refresh()
                else:
                    bar.update(1)
                postfix = {"loss": f"{parts['loss']:.3f}", "val_dice": f"{self.last_val():.3f}"}
                if budget:
                    postfix["step"] = self.state.step
                    postfix["steps/s"] = f"{self.state.step / max(self.state.elapsed, 1e-9):.2f}"
                bar.set_postfix(postfix)
                end_of_epoch = self.state.step % tc.iters_per_epoch == 0
                if end_of_epoch:
                    self.end_epoch(running, validate=(self.state.epoch + 1) % tc.val_every == 0)
                    running = {}
            if running.get("n"):  # stopped mid-epoch (budget, signal): close it properly
                # After a signal the epoch is not over: a resumed run finishes it.
                self.end_epoch(running, validate=not stop, epoch_done=not stop)
            elif not self.state.history:
                self.end_epoch({"n": 0}, validate=not stop, epoch_done=not stop)
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        return self.state

    def last_val(self) -> float:
        for row in reversed(self.state.history):
            if row.get("val_dice") is not None:
                return row["val_dice"]
        return float("nan")

    def end_epoch(self, running: dict[str, float], validate: bool,
                  epoch_done: bool = True) -> None:
        n = max(1, running.pop("n", 1))
        row: dict = {"epoch": self.state.epoch, "step": self.state.step,
                     "time_s": round(self.state.elapsed, 1)}
        row.update({k: v / n for k, v in running.items()})
        best = False
        if validate and self.val:
            per_class = self.validate()
            mean = float(np.nanmean(per_class)) if per_class else float("nan")
            row["val_dice"] = mean
            for name, d in zip(self.config.class_names[1:], per_class, strict=False):
                row[f"val_dice_{name}"] = d
            if mean > self.state.best_dice:
                self.state.best_dice, self.state.best_epoch, best = mean, self.state.epoch, True
        elif not self.val:
            best = True  # no validation cases: the latest model is the best we know
        self.state.history.append(row)
        self.state.epoch += int(epoch_done)
        self.save(best)
        if self.dist.is_main:
            write_log(self.run_dir, self.state.history)
            write_losses(self.run_dir, self.state.losses)


def write_log(run_dir: Path, history: list[dict]) -> None:
    """The CSV log and a PNG of the curves, rewritten each epoch (both small)."""
    from ldseg.pictures import plot_training_curves

    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_write(run_dir / LOG_CSV) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    plot_training_curves(history, run_dir / "curves.png")


def count_samples(cases: list[Case], config: RunConfig) -> int:
    """Training samples on the model grid: one per case, or one per slice for a 2D model on 3D
    data (from the file headers, before anything is loaded)."""
    pre = config.preprocess
    if pre.spatial_dims == pre.data_spatial_dims:
        return len(cases)
    return sum(image_info(c.image_files[0])[0][pre.slice_axis] for c in cases)


def write_losses(run_dir: Path, losses: list[float]) -> None:
    """The loss of every step, exactly as computed (a resumed run can be checked against it)."""
    with atomic_write(run_dir / LOSSES_CSV) as tmp:
        tmp.write_text("step,loss\n" + "".join(f"{i},{v!r}\n" for i, v in enumerate(losses, 1)))


RUN_FILES = (MODEL_BEST, MODEL_LAST, TRAIN_STATE, LOG_CSV, LOSSES_CSV, "curves.png",
             "config.json")


def train(dataset_dir: Path, run_dir: Path, config: RunConfig | None = None, *,
          resume: bool = False, progress_bar: bool = True, overwrite: bool = False,
          allow_nan: bool = False, **plan_options) -> TrainState:
    """Check the dataset, plan (or reload) the run, train, and leave best/last checkpoints.

    Under torchrun every process calls this and they train one model together (DDP).
    """
    with session() as dist:
        return _train(dist, dataset_dir, run_dir, config, resume=resume, overwrite=overwrite,
                      progress_bar=progress_bar and dist.is_main, allow_nan=allow_nan,
                      **plan_options)


def _train(dist: Dist, dataset_dir: Path, run_dir: Path, config: RunConfig | None, *,
           resume: bool, progress_bar: bool, overwrite: bool, allow_nan: bool,
           **plan_options) -> TrainState:
    from ldseg.config import load_run_config
    from ldseg.data.dataset import load_dataset_spec
    from ldseg.training.plan import plan_run

    run_dir = Path(run_dir)
    check_output_folder(run_dir)  # before any work: not a file, writable
    if not resume and not overwrite:
        if (run_dir / TRAIN_STATE).is_file():
            raise LdsegError(f"{run_dir}: already holds a training run; use --resume to continue "
                             "it, --overwrite to start over, or choose another output folder")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise LdsegError(f"{run_dir}: output folder exists and is not empty (use --overwrite "
                             "to train into it anyway, or choose another folder)")
    spec = load_dataset_spec(dataset_dir)
    problems = check_dataset(spec, allow_nan=allow_nan)
    if problems:
        more = ""
        if len(problems) > 1:
            more = f" (and {len(problems) - 1} more problem(s); run 'ldseg check')"
        raise LdsegError(problems[0] + more)
    cases = list_cases(spec)
    if resume:
        if not (run_dir / TRAIN_STATE).is_file():
            raise LdsegError(f"{run_dir}: nothing to resume (no {TRAIN_STATE})")
        saved = load_run_config(run_dir / "config.json")
        if config is not None:  # a resumed run may only change how long it trains
            saved.train.epochs, saved.train.budget_minutes = (config.train.epochs,
                                                              config.train.budget_minutes)
        config = saved
        if (config.model.in_channels, config.model.num_classes) != (spec.num_channels,
                                                                     spec.num_classes):
            raise LdsegError(
                f"{spec.root}: has {spec.num_channels} channel(s) and {spec.num_classes} "
                f"classes, the run in {run_dir} was trained on {config.model.in_channels} and "
                f"{config.model.num_classes}"
            )
    if config is None:
        infos = [image_info(c.image_files[0]) for c in cases]
        config = plan_run(spec, [i[0] for i in infos], [i[1] for i in infos], **plan_options)
    tc = config.train
    dist.check_batch(tc.batch_size)
    train_cases, val_cases = split_cases(cases, tc.val_fraction, tc.val_cases, tc.seed)
    samples = count_samples(train_cases + val_cases[: tc.val_max_cases], config)
    check_training_memory(config, min(tc.batch_size, samples) // dist.world_size, samples,
                          where=spec.root, processes=dist.local_world_size, device=dist.device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    dist.barrier()  # every rank has checked the output folder before rank 0 writes into it
    if dist.is_main:
        if overwrite and not resume:
            for name in RUN_FILES:  # only what an earlier run wrote; other files stay
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, run_dir, train_cases, val_cases, progress_bar,
                      allow_nan=allow_nan, dist=dist)
    if resume:
        trainer.restore()
    return trainer.run(progress_bar=progress_bar)
