"""Noise robustness: foreground Dice and HD95 against the strength of Gaussian image noise,
for one or more trained models on the same cases and the same noise.

The protocol is the method page's. Each image channel is min-max scaled to [0, 1]; Gaussian
noise of standard deviation sigma is added; the result is min-max scaled to [0, 1] again and
segmented (the model's own preprocessing, percentile clipping and z-scoring, follows as for any
input, so at sigma 0 the scaling changes nothing). sigma is therefore a fraction of each
channel's intensity range. One standard-normal noise pattern is drawn per case from `seed` and
the case name, and multiplied by each sigma: every model and every sigma sees the same pattern,
so differences between the curves are the models', not the draws', and a case's noise does not
depend on which other cases are scored.

Scores are those of `ldseg evaluate` (`metrics.case_metrics`, in mm from the image geometry)
and are averaged the same way (`metrics.summarize`: per class over the cases, NaN left out,
then over the foreground classes).
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ldseg.data.dataset import Case, DatasetSpec, list_cases, load_case, load_dataset_spec
from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import case_metrics, summarize
from ldseg.files import atomic_write
from ldseg.inference.postprocess import DEFAULT_KEEP_FRACTION, check_keep_fraction, parse_classes
from ldseg.inference.predictor import Segmenter

DEFAULT_SIGMAS = "0:0.2:0.02"
CSV_COLUMNS = ("model", "sigma", "case", "class", "dice", "hd95")


def parse_sigmas(text: str) -> list[float]:
    """`start:stop:step` (stop included) or a comma-separated list, e.g. `0,0.05,0.1`."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 12) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LdsegError(f"invalid --sigmas '{text}': use start:stop:step (e.g. 0:0.2:0.02) "
                         "or a list (0,0.05,0.1)") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise LdsegError(f"invalid --sigmas '{text}': noise levels are finite and >= 0")
    return values


def _labelled(spec: DatasetSpec, split: str) -> list[Case]:
    cases = list_cases(spec, split)
    if split == "Ts":  # list_cases leaves test labels out; they live in labelsTs
        folder = spec.root / "labelsTs"
        cases = [Case(c.name, c.image_files, folder / f"{c.name}{spec.file_ending}")
                 for c in cases]
    return [c for c in cases if c.label_file is not None and c.label_file.is_file()]


def select_cases(spec: DatasetSpec, names: Sequence[str] = ()) -> tuple[list[Case], str]:
    """The labelled cases to score and a note saying where they come from.

    The test cases (imagesTs with labelsTs) by default; the named ones (test or training)
    when `names` is given; all training cases, with a warning, when there are no test labels.
    """
    test = _labelled(spec, "Ts")
    if names:
        pool = {c.name: c for c in _labelled(spec, "Tr")} | {c.name: c for c in test}
        missing = [n for n in names if n not in pool]
        if missing:
            raise LdsegError(f"{spec.root}: no labelled case named {', '.join(missing)} "
                             "(looked in imagesTs/labelsTs and imagesTr/labelsTr)")
        return [pool[n] for n in dict.fromkeys(names)], f"{len(names)} case(s) chosen by name"
    if test:
        return test, f"{len(test)} test case(s) (imagesTs/labelsTs)"
    train = _labelled(spec, "Tr")
    if not train:
        raise LdsegError(f"{spec.root}: no labelled cases (labelsTs or labelsTr)")
    return train, (f"note: no labelled test cases (imagesTs/labelsTs), so all {len(train)} "
                   "training cases are scored; a model scores higher on cases it was trained "
                   "on (give --cases to choose held-out ones)")


def scale_to_unit(image: np.ndarray) -> np.ndarray:
    """Min-max scale each channel (first axis) to [0, 1]; a constant channel becomes 0."""
    image = image.astype(np.float64)
    axes = tuple(range(1, image.ndim))
    low, high = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return ((image - low) / span).astype(np.float32)


def case_noise(image: np.ndarray, case: str, seed: int) -> np.ndarray:
    """The standard-normal noise pattern of one case: from the seed and the case's name."""
    rng = np.random.default_rng([seed, zlib.crc32(case.encode("utf-8"))])
    return rng.standard_normal(image.shape, dtype=np.float32)


def noisy_image(unit_image: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
    """The protocol's input: [0, 1] image + sigma * noise, min-max scaled to [0, 1] again."""
    return scale_to_unit(unit_image + np.float32(sigma) * noise)


def model_names(runs: Sequence[str | Path]) -> list[str]:
    """Run folder names for legends; a name used twice gets its parent folder in front."""
    paths = [Path(r) for r in runs]
    folders = [p.parent if p.is_file() else p for p in paths]
    names = [f.resolve().name or str(f) for f in folders]
    names = [f"{f.resolve().parent.name}/{n}" if names.count(n) > 1 else n
             for f, n in zip(folders, names, strict=True)]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def _mean_scores(per_case: list[dict], labels: list[int]) -> dict:
    summary = summarize(per_case, labels)
    return {"dice": summary["foreground_mean"]["Dice"], "hd95": summary["foreground_mean"]["HD95"],
            "per_class": {k: {"dice": v["Dice"], "hd95": v["HD95"]}
                          for k, v in summary["mean"].items()}}


def run_robustness(
    runs: Sequence[str | Path],
    dataset: str | Path,
    output_dir: str | Path,
    *,
    sigmas: Sequence[float] | str = DEFAULT_SIGMAS,
    samples: int = 1,
    steps: int | None = None,
    seed: int = 0,
    cases: Sequence[str] = (),
    checkpoint: str = "best",
    device: str = "cpu",
    progress_bar: bool = True,
    keep_largest: str = "",
    keep_fraction: float = DEFAULT_KEEP_FRACTION,
) -> dict:
    """Segment every chosen case of `dataset` at every noise level with every model, and write
    `robustness.json`, `robustness.csv` and `robustness.png` into `output_dir`.

    Returns what robustness.json holds: the settings, `note` (where the cases come from),
    `models` (name -> run, and per sigma the mean foreground `dice` and `hd95` and per class
    means) and `rows` (one per model, sigma, case and class, as in the CSV). `keep_largest`
    and `keep_fraction` post-process every model's labels as `ldseg predict` does. `steps`
    None samples every model with its own run's steps, as `ldseg predict` does.
    """
    sigma_list = parse_sigmas(sigmas) if isinstance(sigmas, str) else [float(s) for s in sigmas]
    if not sigma_list or not all(math.isfinite(s) and s >= 0 for s in sigma_list):
        raise LdsegError(f"invalid noise levels {sigma_list}: finite and >= 0")
    if samples < 1 or (steps is not None and steps < 1):
        raise LdsegError("--samples and --steps must be at least 1")
    if not runs:
        raise LdsegError("give at least one model (-m RUN)")
    check_keep_fraction(keep_fraction)
    spec = load_dataset_spec(dataset)
    chosen, note = select_cases(spec, cases)
    labels = list(range(1, spec.num_classes))
    names = model_names(runs)
    segmenters = [Segmenter.load(run, checkpoint, device) for run in runs]
    largest = [parse_classes(keep_largest, seg.config.class_names) for seg in segmenters]
    # None for a baseline: it does not sample.
    model_steps = [None if seg.config.model.architecture == "baseline"
                   else steps or seg.config.diffusion.sampling_steps for seg in segmenters]
    for run, seg in zip(runs, segmenters, strict=True):
        if seg.config.model.num_classes != spec.num_classes:
            raise LdsegError(f"{run}: the model has {seg.config.model.num_classes} classes, "
                             f"{spec.root / 'dataset.json'} declares {spec.num_classes}")

    # per_case[model][sigma index] -> list of case_metrics entries, in case order
    per_case = {n: [[] for _ in sigma_list] for n in names}
    bar = tqdm(total=len(chosen) * len(sigma_list) * len(names), desc="robustness",
               unit="seg", disable=not progress_bar)
    for case in chosen:
        image, label, geometry = load_case(case, spec)
        unit = scale_to_unit(image)
        noise = case_noise(image, case.name, seed)
        for i, sigma in enumerate(sigma_list):
            noisy = noisy_image(unit, noise, sigma)
            for name, seg, keep, n_steps in zip(names, segmenters, largest, model_steps,
                                                strict=True):
                result = seg.segment_array(noisy, geometry, steps=n_steps, samples=samples,
                                           seed=seed, source=str(case.image_files[0]),
                                           keep_largest=keep, keep_fraction=keep_fraction)
                metrics = case_metrics(result.labels, label, labels, spacing=geometry.spacing)
                per_case[name][i].append({"metrics": metrics,
                                          "reference_file": str(case.label_file)})
                bar.update()
    bar.close()

    rows = []
    models = {}
    for name, run, n_steps in zip(names, runs, model_steps, strict=True):
        curve = [_mean_scores(entries, labels) for entries in per_case[name]]
        models[name] = {"run": str(run), "steps": n_steps, "dice": [c["dice"] for c in curve],
                        "hd95": [c["hd95"] for c in curve],
                        "per_class": {spec.class_names[k]: {
                            "dice": [c["per_class"][str(k)]["dice"] for c in curve],
                            "hd95": [c["per_class"][str(k)]["hd95"] for c in curve]}
                            for k in labels}}
        for sigma, entries, mean in zip(sigma_list, per_case[name], curve, strict=True):
            for case, entry in zip(chosen, entries, strict=True):
                for k in labels:
                    m = entry["metrics"][str(k)]
                    rows.append({"model": name, "sigma": sigma, "case": case.name,
                                 "class": spec.class_names[k], "dice": m["Dice"],
                                 "hd95": m["HD95"]})
            rows.append({"model": name, "sigma": sigma, "case": "mean", "class": "foreground",
                         "dice": mean["dice"], "hd95": mean["hd95"]})
    result = {
        "dataset": str(spec.root), "note": note, "cases": [c.name for c in chosen],
        "classes": {str(k): spec.class_names[k] for k in labels}, "sigmas": sigma_list,
        "samples": samples, "steps": steps, "seed": seed, "checkpoint": checkpoint,
        "keep_largest": keep_largest, "keep_fraction": keep_fraction if keep_largest else None,
        "noise": "per channel: min-max to [0, 1], + sigma * N(0, 1), min-max to [0, 1]",
        "models": models, "rows": rows,
    }
    out = Path(output_dir)
    _write_json(result, out / "robustness.json")
    _write_csv(rows, out / "robustness.csv")
    plot_robustness(result, out / "robustness.png")
    return result


def _write_json(result: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")


def _write_csv(rows: list[dict], path: Path) -> None:
    def value(v: object) -> object:
        return "NaN" if isinstance(v, float) and math.isnan(v) else v

    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([value(row[c]) for c in CSV_COLUMNS] for row in rows)


def _steps_text(result: dict) -> str:
    """'15 steps', or each sampling model's steps when they differ (a baseline has none)."""
    steps = {n: m["steps"] for n, m in result["models"].items() if m.get("steps")}
    if len(set(steps.values())) <= 1:
        return f"{next(iter(steps.values()), result['steps'])} steps"
    return "steps " + ", ".join(f"{n} {s}" for n, s in steps.items())


def plot_robustness(result: dict, path: str | Path) -> None:
    """Mean foreground Dice (left) and HD95 (right) against sigma, one curve per model, in
    Okabe-Ito colours with distinct markers (readable without colour too)."""
    from ldseg.pictures import CLASS_COLOURS, plt  # pictures sets the Agg backend

    colours = CLASS_COLOURS[1:]  # Okabe-Ito without black
    markers = "osD^v<>p"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, model) in enumerate(result["models"].items()):
        style = {"color": colours[i % len(colours)], "marker": markers[i % len(markers)],
                 "ms": 4, "label": name}
        left.plot(result["sigmas"], model["dice"], **style)
        right.plot(result["sigmas"], model["hd95"], **style)
    left.set_ylim(0, 1)
    left.set_ylabel("mean foreground Dice")
    right.set_ylabel("mean foreground HD95 (mm)")
    for ax in (left, right):
        ax.set_xlabel("noise sigma (fraction of the intensity range)")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(f"{Path(result['dataset']).name}: {len(result['cases'])} case(s), "
                 f"{result['samples']} sample(s), {_steps_text(result)}", fontsize=10)
    try:
        with atomic_write(Path(path), suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def format_robustness(result: dict) -> str:
    """Mean foreground Dice per sigma (rows) and model (columns), for the terminal."""
    names = list(result["models"])
    width = max(8, *(len(n) for n in names))
    lines = ["sigma  " + "  ".join(n.rjust(width) for n in names)]
    for i, sigma in enumerate(result["sigmas"]):
        cells = [f"{result['models'][n]['dice'][i]:.4f}".rjust(width) for n in names]
        lines.append(f"{sigma:<5g}  " + "  ".join(cells))
    return "mean foreground Dice\n" + "\n".join(lines)


__all__ = ["parse_sigmas", "run_robustness", "select_cases"]
