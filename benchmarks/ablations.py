"""Ablations of the method page's choices, measured on the synthetic demo task.

Trained variants, each for the same wall-clock budget with the demo's settings (128x128 grid,
4 latent channels, batch 8): the default (denoised latent x0, one-hot label input, per-sample
noise, lean widths, planned latent factor, noise augmentation) against `--denoised-rule
residual`, `--label-input integer`, `--shared-noise`, `--size reference`, `--downsamplings 4`
and `--noise-augment 0`; each
segments the held-out cases (15 DDIM steps, 1 sample). Then, on the default model: sampling
steps 1-50 (Dice, seconds per image), DDIM vs DDPM (eta 0 / 1), and 1-16 samples (Dice of the
mean, ECE, uncertainty-error overlap, GED, seconds per image). The synthetic task (textured
touching objects on a bias field) trains in minutes but is not separable by intensity.
Writes benchmarks/results/ablations.md, and the raw numbers to WORK/ablations.json.

    python benchmarks/ablations.py --budget-minutes 10 --parallel [--work DIR]

`--parallel` trains the variants side by side as 1-thread processes (as many at once as there
are cores); timings are then per image on one thread. `--reuse` keeps variants already
trained in WORK (to redo only the sampling study and the table).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from provenance import ROOT, provenance

from ldseg.data.dataset import find_image_cases, load_case
from ldseg.data.imageio import read_image
from ldseg.data.synthetic import write_synthetic_dataset
from ldseg.demo import DEMO_GRID, DEMO_LATENT_CHANNELS
from ldseg.evaluation.metrics import case_metrics
from ldseg.evaluation.uncertainty import (
    expected_calibration_error,
    generalized_energy_distance,
    uncertainty_error_overlap,
)
from ldseg.files import atomic_write
from ldseg.inference.predictor import Segmenter

VARIANTS = {  # name -> (training flags, what it changes)
    "default": ([], "x0 rule, one-hot labels, per-sample noise"),
    "residual": (["--denoised-rule", "residual"], "denoised latent z_t - eps_hat (reference)"),
    "integer": (["--label-input", "integer"], "integer label map as one channel (reference)"),
    "shared-noise": (["--shared-noise"], "one eps repeated across the batch (reference)"),
    "reference-widths": (["--size", "reference"],
                         "the method page's widths (default: lean full-resolution stages)"),
    "latent-1/16": (["--downsamplings", "4"],
                    "the method page's 1/16 latent (default: planned, 1/8 at 128x128)"),
    "no-noise-augment": (["--noise-augment", "0"],
                         "no acquisition-like noise in training (default: std up to 1.0)"),
}
STEPS = (1, 2, 5, 10, 15, 25, 50)
ETAS = (0.0, 1.0)
SAMPLES = (1, 4, 8, 16)


def train_command(dataset: Path, run: Path, flags: list[str], budget: float, threads: int,
                  seed: int) -> list[str]:
    h, w = DEMO_GRID
    return [sys.executable, "-m", "ldseg.cli", "train", str(dataset), "-o", str(run),
            "--grid", f"{h},{w}", "--latent-channels", str(DEMO_LATENT_CHANNELS),
            "--batch-size", "8", "--iters-per-epoch", "40", "--val-fraction", "0.1",
            "--budget-minutes", f"{budget:g}", "--threads", str(threads), "--seed", str(seed),
            "--no-progress", *flags]


def job_layout(parallel: bool, threads: int) -> tuple[int, int]:
    """(threads per process, processes at once): side by side with 1 thread each when
    `parallel`, else one process on every core."""
    cores = os.cpu_count() or 1
    threads = threads or (1 if parallel else cores)
    return threads, (max(1, cores // threads) if parallel else 1)


def run_jobs(commands: dict[str, list[str]], jobs: int, logs: Path) -> dict[str, int]:
    """Run the commands, at most `jobs` at once; returns each one's exit status."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(commands.items()), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            print("$", " ".join(cmd), flush=True)
            log = open(logs / f"{name}.log", "w")  # closed when the process ends
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                log.close()
                del running[name]
        time.sleep(0.5)
    return codes


def test_cases(dataset: Path) -> list[tuple[np.ndarray, object, np.ndarray]]:
    cases = []
    for case in find_image_cases(dataset / "imagesTs", ".png"):
        image, _, geometry = load_case(case)
        reference = read_image(dataset / "labelsTs" / f"{case.name}.png")[0][0]
        cases.append((image, geometry, reference.astype(np.int64)))
    return cases


def score(seg: Segmenter, cases: list, *, steps: int = 15, eta: float = 0.0,
          samples: int = 1) -> dict:
    """Dice per foreground class (mean over cases), uncertainty scores and seconds per image."""
    k = seg.config.model.num_classes
    dice, ece, ueo, ueo_fixed, ged, seconds = [], [], [], [], [], 0.0
    for image, geometry, ref in cases:
        start = time.perf_counter()
        out = seg.segment_array(image, geometry, steps=steps, eta=eta, samples=samples, seed=0)
        seconds += time.perf_counter() - start
        metrics = case_metrics(out.labels, ref, list(range(1, k)))
        dice.append([metrics[str(c)]["Dice"] for c in range(1, k)])
        ece.append(np.mean([expected_calibration_error(out.probabilities, ref, c)
                            for c in range(1, k)]))
        overlap = uncertainty_error_overlap(out.uncertainty, out.labels, ref,
                                            max_value=math.log(k))
        ueo.append(overlap["best"])
        ueo_fixed.append(overlap["fixed"])
        maps = out.sample_labels if out.sample_labels is not None else out.labels[None]
        ged.append(generalized_energy_distance(maps, ref, k))
    per_class = np.nanmean(np.array(dice, dtype=float), axis=0)
    return {"dice": per_class.tolist(), "dice_fg": float(np.nanmean(per_class)),
            "ece": float(np.nanmean(ece)), "ueo": float(np.nanmean(ueo)),
            "ueo_fixed": float(np.nanmean(ueo_fixed)), "ged": float(np.mean(ged)),
            "seconds_per_image": seconds / len(cases)}


def run_summary(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    with open(run / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {"steps": int(last["step"]), "budget_minutes": config["train"]["budget_minutes"],
            "val_dice": float(last.get("val_dice") or "nan"),
            "class_names": config["class_names"]}


def study(work: Path, dataset: Path, variants: list[str]) -> dict:
    """Score every trained variant, then the sampling settings on the default model."""
    cases = test_cases(dataset)
    results: dict = {"variants": {}, "num_test_cases": len(cases)}
    for name in variants:
        seg = Segmenter.load(work / "runs" / name)
        seg.segment_array(cases[0][0], cases[0][1], steps=1)  # warm-up, not timed
        results["variants"][name] = {**run_summary(work / "runs" / name), **score(seg, cases)}
        print(f"{name}: Dice {results['variants'][name]['dice_fg']:.3f}", flush=True)
    if "default" not in variants:
        return results
    seg = Segmenter.load(work / "runs" / "default")
    seg.segment_array(cases[0][0], cases[0][1], steps=1)
    results["steps"] = {s: score(seg, cases, steps=s) for s in STEPS}
    results["eta"] = {e: score(seg, cases, eta=e) for e in ETAS}
    results["samples"] = {n: score(seg, cases, samples=n) for n in SAMPLES}
    return results


def report(results: dict, threads: int) -> str:
    variants = results["variants"]
    names = next(iter(variants.values()))["class_names"][1:] if variants else []
    budgets = sorted({v["budget_minutes"] for v in variants.values()})
    n = results["num_test_cases"]
    lines = [
        "# Ablations on the synthetic demo task", "",
        provenance(threads),
        f"Training budget per variant: {', '.join(f'{b:g}' for b in budgets)} min (wall clock), "
        f"demo settings ({DEMO_GRID[0]}x{DEMO_GRID[1]}, {DEMO_LATENT_CHANNELS} latent channels, "
        f"batch 8); Dice on the {n} held-out cases (foreground classes: {', '.join(names)}), "
        "mean over cases.", "",
        "## Trained variants (15 DDIM steps, 1 sample)", "",
        "| variant | what changes | steps | validation Dice | Dice per class | foreground Dice |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in variants.items():
        per_class = ", ".join(f"{d:.3f}" for d in r["dice"])
        lines.append(f"| {name} | {VARIANTS[name][1]} | {r['steps']} | {r['val_dice']:.3f} | "
                     f"{per_class} | {r['dice_fg']:.3f} |")
    if "steps" in results:
        lines += ["", "## Sampling steps (default model, DDIM, 1 sample)", "",
                  "| steps | foreground Dice | seconds per image |", "| --- | --- | --- |"]
        lines += [f"| {s} | {r['dice_fg']:.3f} | {r['seconds_per_image']:.3f} |"
                  for s, r in results["steps"].items()]
        lines += ["", "## DDIM vs DDPM (default model, 15 steps, 1 sample)", "",
                  "| sampler | foreground Dice | seconds per image |", "| --- | --- | --- |"]
        lines += [f"| {'DDIM (eta 0)' if float(e) == 0 else f'DDPM (eta {float(e):g})'} | "
                  f"{r['dice_fg']:.3f} | {r['seconds_per_image']:.3f} |"
                  for e, r in results["eta"].items()]
        lines += ["", "## Number of samples (default model, 15 DDIM steps)", "",
                  "| samples | Dice of the mean | ECE (foreground mean) | UEO best | UEO at 0.5 "
                  "| GED^2 | seconds per image |", "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {s} | {r['dice_fg']:.3f} | {r['ece']:.4f} | {r['ueo']:.3f} | "
                  f"{r['ueo_fixed']:.3f} | {r['ged']:.3f} | {r['seconds_per_image']:.3f} |"
                  for s, r in results["samples"].items()]
        lines += ["", "ECE: one class against the rest, 15 bins, every pixel; UEO: Dice between "
                  "the thresholded entropy (divided by log K) and the error mask; GED^2 with "
                  "d = 1 - IoU over the foreground classes (definitions in "
                  "`ldseg.evaluation.uncertainty`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="wall-clock training budget per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--parallel", action="store_true",
                        help="train variants side by side, one thread each")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per process (default: 1 with --parallel, else all cores)")
    parser.add_argument("--num-train", type=int, default=40)
    parser.add_argument("--num-test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="keep variants already trained")
    parser.add_argument("--work", type=Path, default=ROOT / "work_dirs" / "ablations")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "ablations.md")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    threads, jobs = job_layout(args.parallel, args.threads)
    dataset = args.work / "dataset"
    if not (dataset / "dataset.json").is_file():
        write_synthetic_dataset(dataset, num_train=args.num_train, num_test=args.num_test,
                                seed=args.seed, shape=DEMO_GRID)
    commands = {
        name: train_command(dataset, args.work / "runs" / name, VARIANTS[name][0],
                            args.budget_minutes, threads, args.seed)
        for name in variants
        if not (args.reuse and (args.work / "runs" / name / "model_last.safetensors").is_file())
    }
    for name in commands:  # a fresh run each time, unless --reuse kept it
        shutil.rmtree(args.work / "runs" / name, ignore_errors=True)
    codes = run_jobs(commands, jobs, args.work / "logs")
    if any(codes.values()):
        sys.exit(f"training failed: {codes}; see {args.work}/logs/*.log")
    torch.set_num_threads(threads)
    results = study(args.work, dataset, variants)
    with atomic_write(args.work / "ablations.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    text = report(results, threads)
    with atomic_write(args.output) as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
