"""LDSeg against the deterministic baseline U-Net on the real sample data, same budget.

Three tasks as in core_accuracy.py (knee MRI 3D, knee as 2D slices, GlaS 2D; train on cases
1-4, test on case 5). Per task, LDSeg and `--model baseline` train for the same wall-clock
budget with the same flags, then: `ldseg predict` (LDSeg with 1 and 8 samples, the baseline's
softmax; mean probabilities saved for calibration), `ldseg evaluate` (per-class Dice and HD95
in the original geometry, ECE, uncertainty-error overlap), and `ldseg robustness` on both
models with the same noise. Writes benchmarks/results/accuracy.md.

    python benchmarks/accuracy.py --parallel [--budget-minutes knee3d=60,knee2d=15,glas=20]

`--parallel` runs the jobs as 1-thread processes, as many at once as there are cores, in the
order knee3d LDSeg, knee3d baseline, knee2d ..., so that the two models of a task train side
by side under the same load. `--report-only` rewrites the table from a finished WORK folder.

`--seeds 0,1,2` trains every model once per seed (WORK/seed0, WORK/seed1, ...) and adds a table
over the seeds: one run per model says little when two seeds of the same model differ by more
than the two models do, so the targets are then judged on the means and the paired differences.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from ablations import job_layout, run_jobs
from core_accuracy import DATA, TASKS, import_dataset
from provenance import ROOT, provenance

from ldseg.files import atomic_write

MODELS = ("ldseg", "baseline")
SIGMA_REF, SIGMA_NOISY = 0.0, 0.1


def default_budgets() -> dict[str, float]:
    """core_accuracy.py's budget per task."""
    return {task: float(spec["train"][spec["train"].index("--budget-minutes") + 1])
            for task, spec in TASKS.items()}


def parse_budgets(text: str, tasks: list[str]) -> dict[str, float]:
    """`30` for every task, or `knee3d=60,knee2d=15,glas=20` (unnamed tasks keep defaults)."""
    budgets = default_budgets()
    if not text:
        return {t: budgets[t] for t in tasks}
    if "=" not in text:
        return {t: float(text) for t in tasks}
    for item in text.split(","):
        name, value = item.split("=")
        budgets[name.strip()] = float(value)
    return {t: budgets[t] for t in tasks}


def train_flags(task: str) -> list[str]:
    flags = list(TASKS[task]["train"])
    i = flags.index("--budget-minutes")
    return flags[:i] + flags[i + 2:]


# Prediction folder -> (model, samples); "ldseg_s8" takes --samples (8 by default).
PREDICTIONS = {"ldseg_s1": ("ldseg", 1), "ldseg_s8": ("ldseg", 8), "baseline": ("baseline", 1)}
EQUAL_STEPS = "baseline_equal_steps"  # optional (--equal-steps): run and prediction folder
AUTOENCODER = "ldseg_autoencoder"  # the test labels through LDSeg's label autoencoder
# Dice lost at sigma 0.1 below which a model counts as flat: half a Dice point is within the
# spread of one LDSeg sample, so the ratio of two such losses says nothing.
FLAT_LOSS = 0.005


def postprocess_flags(task: str) -> str:
    """The task's label post-processing (knee: each bone's largest component), for both models
    in predict and robustness alike."""
    return " ".join(TASKS[task].get("postprocess", []))


def task_job(work: Path, task: str, model: str, budget: float, threads: int,
             steps: int | None, ldseg_samples: int, extra_flags: str = "", train: bool = True,
             samples_eta: float = 1.0) -> str:
    """Train one model of a task (unless `train` is False: an already trained run), then
    predict and evaluate with it: one shell chain."""
    cli = f"{sys.executable} -m ldseg.cli"
    dataset = work / "data" / TASKS[task]["dataset"]
    run = work / "runs" / task / model
    extra = (" --model baseline" if model == "baseline" else "") + (
        f" {extra_flags}" if extra_flags else "")
    commands = [] if not train else [
        f"rm -rf {run}",
        f"{cli} train {dataset} -o {run} --threads {threads} --no-progress "
        f"{' '.join(train_flags(task))} --budget-minutes {budget:g}{extra}"]
    for folder, (m, samples) in PREDICTIONS.items():
        if m != model:
            continue
        samples = ldseg_samples if folder == "ldseg_s8" else samples
        eta = f" --eta {samples_eta:g}" if folder == "ldseg_s8" else ""
        pred = work / "pred" / task / folder
        commands += [
            f"{cli} predict -m {run} -i {dataset}/imagesTs -o {pred}{_steps_flag(steps)} "
            f"--samples {samples}{eta} --save-probabilities --save-samples --overwrite "
            f"--no-progress {postprocess_flags(task)}",
            f"{cli} evaluate {pred} {dataset}/labelsTs -d {dataset}/dataset.json",
        ]
    if model == "ldseg":
        commands.append(autoencode_job(work, task))
    return " && ".join(commands)


def autoencode_job(work: Path, task: str) -> str:
    """The test labels through LDSeg's label encoder and decoder, scored like a prediction:
    the Dice that even a perfect denoiser could not exceed with this latent and decoder."""
    cli = f"{sys.executable} -m ldseg.cli"
    dataset = work / "data" / TASKS[task]["dataset"]
    pred = work / "pred" / task / AUTOENCODER
    return (f"{cli} autoencode -m {work / 'runs' / task / 'ldseg'} -i {dataset}/labelsTs "
            f"-o {pred} --overwrite --no-progress && "
            f"{cli} evaluate {pred} {dataset}/labelsTs -d {dataset}/dataset.json")


def equal_steps_job(work: Path, task: str, threads: int, extra_flags: str = "") -> str:
    """The baseline trained for exactly as many steps as LDSeg made within its budget (same
    warm-up and cosine decay, over steps instead of time): per step, who learns more?"""
    cli = f"{sys.executable} -m ldseg.cli"
    dataset = work / "data" / TASKS[task]["dataset"]
    run, pred = work / "runs" / task / EQUAL_STEPS, work / "pred" / task / EQUAL_STEPS
    steps = _steps(work / "runs" / task / "ldseg")
    return " && ".join([
        f"rm -rf {run}",
        f"{cli} train {dataset} -o {run} --threads {threads} --no-progress "
        f"{' '.join(train_flags(task))} --model baseline --epochs 1 --iters-per-epoch {steps}"
        + (f" {extra_flags}" if extra_flags else ""),
        f"{cli} predict -m {run} -i {dataset}/imagesTs -o {pred} --save-probabilities "
        f"--overwrite --no-progress {postprocess_flags(task)}",
        f"{cli} evaluate {pred} {dataset}/labelsTs -d {dataset}/dataset.json",
    ])


def _steps_flag(steps: int | None) -> str:
    """` --steps N`, or nothing: then every LDSeg run samples with its own (planned) steps."""
    return f" --steps {steps}" if steps else ""


def robustness_job(work: Path, task: str, sigmas: str, steps: int | None, samples: int,
                   models: tuple[str, ...] = MODELS) -> str:
    dataset = work / "data" / TASKS[task]["dataset"]
    runs = " ".join(f"-m {work / 'runs' / task / m}" for m in models)
    return (f"{sys.executable} -m ldseg.cli robustness {runs} -d {dataset} "
            f"-o {work / 'robustness' / task} --sigmas {sigmas}{_steps_flag(steps)} "
            f"--samples {samples} --no-progress {postprocess_flags(task)}")


# ---- the report ---------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _steps(run: Path) -> str:
    log = run / "log.csv"
    return log.read_text().strip().splitlines()[-1].split(",")[1] if log.is_file() else "n/a"


def _sigma_index(sigmas: list[float], sigma: float) -> int | None:
    near = [i for i, s in enumerate(sigmas) if abs(s - sigma) < 1e-9]
    return near[0] if near else None


def _steps_text(steps: int | None, results: dict) -> str:
    """'15 steps' when given, else each task's run's own ('knee3d 2, knee2d 15 steps, ...')."""
    if steps:
        return f"{steps} steps"
    return "each run's own steps (" + ", ".join(
        f"{t} {r.get('sampling_steps') or 'n/a'}" for t, r in results.items()) + ")"


def task_results(work: Path, task: str) -> dict:
    """Everything the tables need for one task, read from the run and output folders."""
    out: dict = {"predictions": {}, "robustness": {}}
    configs = {m: _load(work / "runs" / task / m / "config.json") for m in MODELS}
    # Both models train on the planned grid: a baseline-only folder has it in its own config.
    grid = (configs["ldseg"] or configs["baseline"]).get("preprocess", {}).get("grid", [])
    out["grid"] = "x".join(map(str, grid))
    out["sampling_steps"] = configs["ldseg"].get("diffusion", {}).get("sampling_steps")
    out["steps"] = {m: _steps(work / "runs" / task / m) for m in MODELS}
    out["budgets"] = {m: c.get("train", {}).get("budget_minutes") for m, c in configs.items()}
    out["steps"][EQUAL_STEPS] = _steps(work / "runs" / task / EQUAL_STEPS)
    for folder in (*PREDICTIONS, EQUAL_STEPS, AUTOENCODER):
        summary = _load(work / "pred" / task / folder / "summary.json")
        if summary:
            out["predictions"][folder] = summary
    rob = _load(work / "robustness" / task / "robustness.json")
    if rob:
        i0, i1 = (_sigma_index(rob["sigmas"], s) for s in (SIGMA_REF, SIGMA_NOISY))
        for name, model in rob["models"].items():
            d0 = model["dice"][i0] if i0 is not None else math.nan
            d1 = model["dice"][i1] if i1 is not None else math.nan
            out["robustness"][name] = {"dice0": d0, "dice1": d1, "loss": d0 - d1,
                                       "curve": model["dice"]}
        out["sigmas"] = rob["sigmas"]
    return out


def report(work: Path, tasks: list[str], threads: int, ldseg_samples: int, steps: int | None,
           train_flags: str = "", samples_eta: float = 1.0) -> str:
    s8 = f"LDSeg, mean of {ldseg_samples}"
    labels = {"ldseg_s1": "LDSeg, 1 sample", "ldseg_s8": s8, "baseline": "baseline U-Net",
              EQUAL_STEPS: "baseline U-Net, LDSeg's number of steps",
              AUTOENCODER: "LDSeg's label autoencoder on the reference (its ceiling)"}
    results = {t: task_results(work, t) for t in tasks}
    lines = [
        "# LDSeg vs a deterministic U-Net on the sample data", "",
        provenance(threads),
        "Training budget per task (LDSeg / baseline, wall clock): "
        + ", ".join(f"{t} " + " / ".join(f"{b:g}" if b is not None else "n/a"
                                         for b in results[t]["budgets"].values()) + " min"
                    for t in tasks) + ". Train on cases 1-4, test "
        f"case 5; LDSeg samples with {_steps_text(steps, results)}, DDIM for 1 sample and "
        f"eta {samples_eta:g} for the mean of {ldseg_samples} (`ldseg predict --eta`); scores "
        "by `ldseg evaluate` in the original geometry. The baseline is MONAI's UNet "
        "(`ldseg train --model baseline`) through the same planning, grid, preprocessing, "
        "augmentation, EMA and budget."
        + (f" Both trained with `{train_flags}`." if train_flags else "")
        + "".join(f" {t}: both models' labels post-processed with `{postprocess_flags(t)}`."
                  for t in tasks if postprocess_flags(t)), "",
        "## Accuracy", "",
        "| task | model | training steps | grid | Dice per class | HD95 per class (mm) "
        "| foreground Dice |", "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, r in results.items():
        for folder, summary in r["predictions"].items():
            names = summary.get("class_names", {})
            mean = summary["mean"]
            dice = ", ".join(f"{names.get(k, k)} {_fmt(v['Dice'])}" for k, v in mean.items())
            hd95 = ", ".join(_fmt(v["HD95"], 1) for v in mean.values())
            model = folder if folder in ("baseline", EQUAL_STEPS) else "ldseg"
            lines.append(f"| {task} | {labels[folder]} | {r['steps'][model]} | {r['grid']} | "
                         f"{dice} | {hd95} | {_fmt(summary['foreground_mean']['Dice'])} |")
    lines += ["", "## Calibration (expected calibration error, 15 bins, foreground classes)", "",
              f"| task | ECE {s8} | ECE LDSeg, 1 sample | ECE baseline softmax | "
              f"UEO {s8} | UEO baseline | {s8} better calibrated |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        p = r["predictions"]
        ece = {f: p[f]["foreground_mean"].get("ECE", math.nan) if f in p else math.nan
               for f in PREDICTIONS}
        ueo = {f: p[f].get("uncertainty_mean", {}).get("UEO", math.nan) if f in p else math.nan
               for f in PREDICTIONS}
        better = ("n/a" if not all(map(math.isfinite, (ece["ldseg_s8"], ece["baseline"])))
                  else "yes" if ece["ldseg_s8"] < ece["baseline"] else "no")
        lines.append(f"| {task} | {_fmt(ece['ldseg_s8'], 4)} | {_fmt(ece['ldseg_s1'], 4)} | "
                     f"{_fmt(ece['baseline'], 4)} | {_fmt(ueo['ldseg_s8'])} | "
                     f"{_fmt(ueo['baseline'])} | {better} |")
    lines += ["", f"## Noise robustness (`ldseg robustness`, LDSeg 1 sample): foreground Dice "
              f"loss at sigma {SIGMA_NOISY:g} relative to sigma {SIGMA_REF:g}", "",
              "| task | model | Dice at 0 | Dice at 0.1 | loss | loss / Dice at 0 "
              "| LDSeg loss / baseline loss |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        rob = r["robustness"]
        ratio = math.nan
        if len(rob) == 2 and rob["baseline"]["loss"] > 0:
            ratio = rob["ldseg"]["loss"] / rob["baseline"]["loss"]
        for name, v in rob.items():
            relative = v["loss"] / v["dice0"] if v["dice0"] > 0 else math.nan
            lines.append(f"| {task} | {name} | {_fmt(v['dice0'])} | {_fmt(v['dice1'])} | "
                         f"{_fmt(v['loss'])} | {_fmt(100 * relative, 1)} % | "
                         f"{_fmt(ratio, 2) if name == 'ldseg' else ''} |")
    curves = [(t, r) for t, r in results.items() if len(r.get("sigmas", [])) > 2]
    if curves:
        sigmas = curves[0][1]["sigmas"]
        lines += ["", "Full curves, mean foreground Dice per sigma:", "",
                  "| task | model | " + " | ".join(f"{s:g}" for s in sigmas) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in sigmas) + " |"]
        for task, r in curves:
            for name, v in r["robustness"].items():
                lines.append(f"| {task} | {name} | " + " | ".join(_fmt(d) for d in v["curve"])
                             + " |")
    lines += ["", "## The issue's targets", ""]
    for task, r in results.items():
        p, rob = r["predictions"], r["robustness"]
        checks = []
        for folder, what in (("ldseg_s1", "1 sample"), ("ldseg_s8", f"mean of {ldseg_samples}")):
            if folder in p and "baseline" in p:
                d_l, d_b = (p[f]["foreground_mean"]["Dice"] for f in (folder, "baseline"))
                checks.append(f"Dice ({what}) {_fmt(d_l)} vs baseline {_fmt(d_b)} "
                              f"({'met' if d_l >= d_b - 0.01 else 'NOT met'}: "
                              ">= baseline - 0.01)")
        if len(rob) == 2:
            lo_l, lo_b = rob["ldseg"]["loss"], rob["baseline"]["loss"]
            if max(lo_l, lo_b) < FLAT_LOSS:
                verdict = f"n/a: <= half the baseline's, but both lose < {FLAT_LOSS}"
            else:
                verdict = ("met" if lo_l <= 0.5 * max(lo_b, 0.0) else "NOT met") + \
                    ": <= half the baseline's"
            checks.append(f"loss at 0.1 {_fmt(lo_l)} vs baseline {_fmt(lo_b)} ({verdict})")
        if "ldseg_s8" in p and "baseline" in p:
            e_l = p["ldseg_s8"]["foreground_mean"].get("ECE", math.nan)
            e_b = p["baseline"]["foreground_mean"].get("ECE", math.nan)
            checks.append(f"ECE {_fmt(e_l, 4)} vs baseline {_fmt(e_b, 4)} "
                          f"({'met' if e_l < e_b else 'NOT met'}: lower)")
        alone = "no LDSeg" if "baseline" in p else "no baseline"  # a --models folder
        lines.append(f"- {task}: " + ("; ".join(checks) or f"{alone} in this folder"))
    return "\n".join(lines) + "\n"


def seed_works(work: Path, seeds: list[int]) -> dict[int, Path]:
    """One seed keeps the plain WORK layout; several get WORK/seed<S> each."""
    return {seeds[0]: work} if len(seeds) == 1 else {s: work / f"seed{s}" for s in seeds}


def seed_scores(r: dict) -> dict[str, float]:
    """The figures the targets are judged on, from one seed's task_results."""
    p, rob = r["predictions"], r["robustness"]

    def fg(folder: str, metric: str) -> float:
        return p[folder]["foreground_mean"].get(metric, math.nan) if folder in p else math.nan

    return {"dice_s1": fg("ldseg_s1", "Dice"), "dice_s8": fg("ldseg_s8", "Dice"),
            "dice_baseline": fg("baseline", "Dice"), "ece_s8": fg("ldseg_s8", "ECE"),
            "ece_baseline": fg("baseline", "ECE"),
            "dice_equal": fg(EQUAL_STEPS, "Dice"), "ece_equal": fg(EQUAL_STEPS, "ECE"),
            "loss_ldseg": rob.get("ldseg", {}).get("loss", math.nan),
            "loss_baseline": rob.get("baseline", {}).get("loss", math.nan)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (sd NaN for fewer than 2)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def seeds_report(works: dict[int, Path], tasks: list[str], ldseg_samples: int) -> str:
    """Per task, one row per seed, the mean (sd) over seeds, and the targets judged on the means
    and on the paired differences (the two models of a seed trained side by side)."""
    header = {"dice_s1": "Dice LDSeg 1 sample", "dice_s8": f"Dice LDSeg mean of {ldseg_samples}",
              "dice_baseline": "Dice baseline", "ece_s8": f"ECE LDSeg ({ldseg_samples})",
              "ece_baseline": "ECE baseline", "loss_ldseg": "loss LDSeg",
              "loss_baseline": "loss baseline", "dice_equal": "Dice baseline at LDSeg's steps",
              "ece_equal": "ECE baseline at LDSeg's steps"}
    scored = {t: {s: (r["steps"], seed_scores(r)) for s, w in works.items()
                  if (r := task_results(w, t))["predictions"]} for t in tasks}
    equal = any(math.isfinite(sc["ece_equal"]) for rows in scored.values()
                for _, sc in rows.values())
    cols = [c for c in header if equal or not c.endswith("_equal")]
    lines = ["", "## Over seeds", "",
             f"Each seed trains the models again (`ldseg train --seed S`, everything else equal). "
             f"Loss: foreground Dice lost at sigma {SIGMA_NOISY:g} (`ldseg robustness`).", "",
             "| task | seed | steps LDSeg / baseline | " + " | ".join(header[c] for c in cols)
             + " |", "| --- " * (3 + len(cols)) + "|"]
    targets = []
    for task, rows in scored.items():
        if not rows:
            continue
        for seed, (steps, sc) in rows.items():
            lines.append(f"| {task} | {seed} | {steps['ldseg']} / {steps['baseline']} | "
                         + " | ".join(_fmt(sc[c], 4 if c.startswith("ece") else 3)
                                      for c in cols) + " |")
        stats = {c: mean_sd([sc[c] for _, sc in rows.values()]) for c in cols}
        lines.append(f"| {task} | mean (sd) of {len(rows)} | | " + " | ".join(
            f"{_fmt(m, 4 if c.startswith('ece') else 3)} ({_fmt(sd, 4)})"
            for c, (m, sd) in stats.items()) + " |")
        scores = [sc for _, sc in rows.values()]
        ece_diff = mean_sd([sc["ece_s8"] - sc["ece_baseline"] for sc in scores])
        ece_wins = sum(sc["ece_s8"] < sc["ece_baseline"] for sc in scores)
        d_l, d_b = stats["dice_s1"][0], stats["dice_baseline"][0]
        lo_l, lo_b = stats["loss_ldseg"][0], stats["loss_baseline"][0]
        if not math.isfinite(d_b):  # an LDSeg-only folder (--models ldseg)
            targets.append(f"- {task}, {len(rows)} seeds: no baseline in this folder; LDSeg "
                           f"Dice (1 sample) {_fmt(d_l)}, loss at {SIGMA_NOISY:g} {_fmt(lo_l)}, "
                           f"ECE {_fmt(stats['ece_s8'][0], 4)}")
            continue
        if max(lo_l, lo_b) < FLAT_LOSS:
            noise = f"n/a: both lose < {FLAT_LOSS}"
        else:
            noise = "met" if lo_l <= 0.5 * max(lo_b, 0.0) else "NOT met"
        targets.append(
            f"- {task}, {len(rows)} seeds: Dice (1 sample) {_fmt(d_l)} vs baseline {_fmt(d_b)} "
            f"({'met' if d_l >= d_b - 0.01 else 'NOT met'}); loss at {SIGMA_NOISY:g} "
            f"{_fmt(lo_l)} vs {_fmt(lo_b)} ({noise}); ECE {_fmt(stats['ece_s8'][0], 4)} vs "
            f"{_fmt(stats['ece_baseline'][0], 4)} "
            f"({'met' if stats['ece_s8'][0] < stats['ece_baseline'][0] else 'NOT met'}), "
            f"paired difference {_fmt(ece_diff[0], 4)} (sd {_fmt(ece_diff[1], 4)}), "
            f"LDSeg lower in {ece_wins} of {len(scores)} seeds")
    return "\n".join(lines + ["", "Targets on the means:", ""] + targets) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="knee3d,knee2d,glas")
    parser.add_argument("--budget-minutes", default="",
                        help="minutes per task for each model: 30, or knee3d=60,knee2d=15,... "
                             "(default: core_accuracy.py's)")
    parser.add_argument("--parallel", action="store_true",
                        help="run jobs side by side, one thread each")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per process (default: 1 with --parallel, else all cores)")
    parser.add_argument("--sigmas", default="0:0.2:0.02",
                        help="robustness noise levels; must include 0 and 0.1")
    parser.add_argument("--steps", type=int,
                        help="LDSeg sampling steps (default: each run's own, as planned by "
                             "`ldseg train`: 2 for knee3d, 15 for the 2D tasks)")
    parser.add_argument("--samples", type=int, default=8,
                        help="LDSeg samples for the uncertainty prediction")
    # DDPM (eta 1) for the uncertainty prediction: more diverse samples, calibrated better.
    # Same models, 8 samples: ECE knee 2D 0.0176 -> 0.0130 and 0.0178 -> 0.0139 (two runs),
    # knee 3D 0.0160 -> 0.0154, Dice within 0.003 (benchmarks/results/accuracy_knee2d.md).
    parser.add_argument("--samples-eta", type=float, default=1.0,
                        help="eta of the uncertainty prediction (0 = DDIM, 1 = DDPM)")
    parser.add_argument("--robustness-samples", type=int, default=1)
    parser.add_argument("--train-flags", default="",
                        help="extra `ldseg train` flags for both models, e.g. "
                             "'--noise-augment 0.5'")
    parser.add_argument("--equal-steps", action="store_true",
                        help="also train the baseline for LDSeg's number of steps")
    parser.add_argument("--equal-steps-only", action="store_true",
                        help="only the --equal-steps runs, in a finished --work folder")
    parser.add_argument("--autoencode-only", action="store_true",
                        help="only the label-autoencoder ceiling, in a finished --work folder")
    parser.add_argument("--predict-only", action="store_true",
                        help="predict, evaluate and robustness again with the trained runs of a "
                             "finished --work folder")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="which models to train, e.g. 'ldseg' alone to compare a changed "
                             "LDSeg with a baseline measured before (the report leaves the "
                             "baseline's columns n/a)")
    parser.add_argument("--seeds", default="0",
                        help="training seeds, e.g. 0,1,2: each model trained once per seed")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / "work_dirs" / "accuracy")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "accuracy.md")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        sys.exit(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    models = tuple(args.models.split(","))
    if set(models) - set(MODELS):  # "" splits to ("",), caught here too
        sys.exit(f"--models: choose from {list(MODELS)}, got '{args.models}'")
    budgets = parse_budgets(args.budget_minutes, tasks)
    threads, jobs = job_layout(args.parallel, args.threads)
    seeds = [int(x) for x in args.seeds.split(",")]
    works = seed_works(args.work, seeds)
    tag = {seed: "" if len(seeds) == 1 else f"_seed{seed}" for seed in seeds}
    logs = args.work / "logs"
    codes: dict[str, int] = {}
    if args.autoencode_only:
        codes = run_jobs({f"{t}_{AUTOENCODER}{tag[s]}": ["bash", "-c", autoencode_job(w, t)]
                          for s, w in works.items() for t in tasks}, jobs, logs)
    elif args.equal_steps_only:
        codes = run_jobs({f"{t}_{EQUAL_STEPS}{tag[s]}": ["bash", "-c", equal_steps_job(
            w, t, threads, f"{args.train_flags} --seed {s}".strip())]
                          for s, w in works.items() for t in tasks}, jobs, logs)
    elif not args.report_only:
        if not DATA.is_dir():
            sys.exit(f"sample data not found at {DATA}")
        for work in works.values():
            for task in tasks:
                import_dataset(work, TASKS[task]["dataset"], *TASKS[task]["data"])
        # Seed by seed, so that the two models of a task and seed train side by side.
        train = {f"{t}_{m}{tag[s]}": ["bash", "-c", task_job(
            w, t, m, budgets[t], threads, args.steps, args.samples,
            f"{args.train_flags} --seed {s}".strip(), train=not args.predict_only,
            samples_eta=args.samples_eta)]
            for s, w in works.items() for t in tasks for m in models}
        codes = run_jobs(train, jobs, logs)
        rob = {}
        for s, w in works.items():
            for t in tasks:
                if not any(codes[f"{t}_{m}{tag[s]}"] for m in models):
                    rob[f"{t}_robustness{tag[s]}"] = ["bash", "-c", robustness_job(
                        w, t, args.sigmas, args.steps, args.robustness_samples, models)]
                if args.equal_steps and not codes.get(f"{t}_ldseg{tag[s]}", 1):
                    rob[f"{t}_{EQUAL_STEPS}{tag[s]}"] = ["bash", "-c", equal_steps_job(
                        w, t, threads, f"{args.train_flags} --seed {s}".strip())]
        codes |= run_jobs(rob, jobs, logs)
    if any(codes.values()):
        print(f"some jobs failed ({codes}); see {logs}/*.log", file=sys.stderr)
    text = report(works[seeds[0]], tasks, threads, args.samples, args.steps, args.train_flags,
                  args.samples_eta)
    if len(seeds) > 1:
        text = text.replace("\n## Accuracy\n", f"\nThe tables below are seed {seeds[0]}'s; "
                            "the last section covers every seed.\n\n## Accuracy\n", 1)
        text += seeds_report(works, tasks, args.samples)
    with atomic_write(args.output) as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
