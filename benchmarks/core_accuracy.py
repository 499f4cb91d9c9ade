"""Accuracy of the LDSeg core on the real sample data, with the default settings.

Three tasks, each: import (case 5 held out) -> train on cases 1-4 for a wall-clock budget ->
predict case 5 with 15 DDIM steps -> `ldseg evaluate` against the original label in the
original geometry. Writes benchmarks/results/core_accuracy.md.

    python benchmarks/core_accuracy.py [--tasks knee3d,knee2d,glas] [--threads 1] [--work DIR]

Tasks run one after another, or side by side with `--parallel` (one thread each: on a 2-core
machine two 1-thread jobs finish sooner than two 2-thread jobs in a row).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = (1, 4)
DATA = ROOT.parent / "shared" / "data"

TASKS = {
    "knee3d": {
        "data": ("knee-sample", ["--class-names", "background,femur,tibia"]),
        "dataset": "knee",
        "train": ["--budget-minutes", "60", "--batch-size", "2", "--val-fraction", "0"],
        # one femur and one tibia: islands elsewhere are errors (nnU-Net's post-processing; the
        # fraction keeps a bone that came out in two large pieces whole)
        "postprocess": ["--keep-largest", "all", "--keep-fraction", "0.2"],
    },
    "knee2d": {
        "data": ("knee-sample", ["--class-names", "background,femur,tibia"]),
        "dataset": "knee",
        "train": ["--dims", "2", "--slice-axis", "2", "--budget-minutes", "15", "--batch-size",
                  "8", "--flip-axes", "none", "--val-fraction", "0"],
        "postprocess": ["--keep-largest", "all", "--keep-fraction", "0.2"],
    },
    "glas": {
        "data": ("glas-sample", ["--class-names", "background,gland",
                                 "--instances-to-foreground"]),
        "dataset": "glas",
        "train": ["--budget-minutes", "20", "--val-fraction", "0"],
    },
}


def ldseg(*args: str | Path) -> None:
    print("$ ldseg", " ".join(str(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "ldseg.cli", *[str(a) for a in args]], check=True)


def import_dataset(work: Path, name: str, source: str, extra: list[str]) -> Path:
    out = work / "data" / name
    if not (out / "dataset.json").is_file():
        ldseg("import", DATA / source / "Image", DATA / source / "Label", "-o", out,
              "--test-cases", "Case5", *extra)
    return out


def run_task(work: Path, task: str, threads: int) -> subprocess.Popen:
    spec = TASKS[task]
    dataset = work / "data" / spec["dataset"]
    run = work / "runs" / task
    commands = [
        f"{sys.executable} -m ldseg.cli train {dataset} -o {run} --threads {threads} "
        f"--no-progress {' '.join(spec['train'])}",
    ]
    for samples in SAMPLES:  # one sample, and the mean of several (LDSeg's ensemble)
        pred = work / "pred" / f"{task}_s{samples}"
        commands += [
            f"{sys.executable} -m ldseg.cli predict -m {run} -i {dataset}/imagesTs -o {pred} "
            f"--steps 15 --samples {samples} --overwrite --no-progress",
            f"{sys.executable} -m ldseg.cli evaluate {pred} {dataset}/labelsTs "
            f"-d {dataset}/dataset.json",
        ]
    script = " && ".join(commands)
    log = open(work / f"{task}.log", "w")
    return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT)


def report(work: Path, tasks: list[str], threads: int) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# LDSeg core accuracy on the sample data",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores; {threads} thread(s) per task; commit {commit}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "Train on cases 1-4, predict case 5 (15 DDIM steps; 1 sample, and the mean of 4), "
        "metrics by `ldseg evaluate` against the original label in the original geometry.",
        "",
        "| task | training budget | steps | grid | samples | Dice per class | HD95 (mm) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        config = json.loads((work / "runs" / task / "config.json").read_text())
        log = (work / "runs" / task / "log.csv").read_text().strip().splitlines()
        steps = log[-1].split(",")[1]
        budget = config["train"]["budget_minutes"]
        grid = "x".join(map(str, config["preprocess"]["grid"]))
        for samples in SAMPLES:
            summary = json.loads((work / "pred" / f"{task}_s{samples}" / "summary.json")
                                 .read_text())
            names = summary.get("class_names", {})
            dice = ", ".join(f"{names.get(k, k)} {v['Dice']:.3f}"
                             for k, v in summary["mean"].items())
            hd95 = ", ".join(f"{v['HD95']:.1f}" for v in summary["mean"].values())
            lines.append(f"| {task} | {budget:g} min | {steps} | {grid} | {samples} | {dice} "
                         f"| {hd95} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="knee3d,knee2d,glas")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the results table from finished tasks in --work")
    parser.add_argument("--work", type=Path, default=ROOT / "work_dirs" / "core_accuracy")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if not DATA.is_dir():
        sys.exit(f"sample data not found at {DATA}")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_report(args.work, tasks, args.threads)
        return
    for task in tasks:
        import_dataset(args.work, TASKS[task]["dataset"], *TASKS[task]["data"])
    if args.parallel:
        procs = [run_task(args.work, t, args.threads) for t in tasks]
        codes = [p.wait() for p in procs]
    else:
        codes = [run_task(args.work, t, args.threads).wait() for t in tasks]
    if any(codes):
        sys.exit(f"a task failed ({dict(zip(tasks, codes, strict=True))}); see {args.work}/*.log")
    write_report(args.work, tasks, args.threads)


def write_report(work: Path, tasks: list[str], threads: int) -> None:
    text = report(work, tasks, threads)
    out = ROOT / "benchmarks" / "results" / "core_accuracy.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
