"""What a report draws on, found on disk from a run or a prediction folder.

A prediction folder names its model, images and sampler settings in `prediction.json`
(written by `ldseg predict`); options given to `ldseg report` take precedence. References come
from `-r` or from the file names in `summary.json`; metrics from `summary.json`, or are
computed here (in memory, nothing written) by `ldseg.evaluation.metrics` when only references
are given.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ldseg.config import RunConfig
from ldseg.data.dataset import Case, find_image_cases, load_dataset_spec
from ldseg.data.imageio import SUPPORTED_FORMATS, file_ending, read_image
from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import SUMMARY_FILE, case_metrics, load_summary, summarize
from ldseg.inference.predictor import PREDICTION_JSON, resolve_model_file, uncertainty_ending
from ldseg.training.checkpoint import load_model_file

ROBUSTNESS_FILES = ("robustness.csv", "robustness.json")


@dataclass
class CaseFiles:
    """One predicted case and what belongs to it."""

    name: str
    prediction: Path
    image: Case | None
    reference: Path | None
    uncertainty: Path | None
    metrics: dict[str, dict] | None  # label (str) -> metric -> value, from the summary

    @property
    def mean_dice(self) -> float:
        """Mean foreground Dice over the classes that have one (NaN: no metrics)."""
        values = [m.get("Dice") for m in (self.metrics or {}).values()]
        values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan


@dataclass
class Sources:
    folder: Path
    kind: str  # "prediction" or "run"
    model_file: Path | None
    config: RunConfig | None
    weights: int  # values stored in the model file
    info: dict  # prediction.json
    dataset_name: str
    class_names: list[str]
    channel_names: list[str]
    history: list[dict] = field(default_factory=list)  # rows of the run's log.csv
    robustness: list[dict] = field(default_factory=list)  # rows with model, sigma, dice
    robustness_file: Path | None = None
    summary: dict | None = None
    cases: list[CaseFiles] = field(default_factory=list)  # worst first
    extra_image: Case | None = None  # for the reverse diffusion of a run without predictions


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LdsegError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LdsegError(f"{path}: expected a JSON object")
    return data


def _number(text: object) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value


def read_log(path: Path) -> list[dict]:
    """log.csv rows as numbers (blank cells, e.g. epochs without validation, become None)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    return [r for r in rows if r.get("epoch") is not None]


def read_robustness(folders: list[Path], names: tuple[str, ...] = ROBUSTNESS_FILES
                    ) -> tuple[list[dict], Path | None]:
    """Points {model, sigma, dice} of the first robustness.csv/.json found (CSV columns, or
    JSON records in a list or under 'rows'/'results'): the rows of case 'mean' where there are
    such (as `ldseg robustness` writes), else the mean Dice per model and sigma."""
    for folder in folders:
        for name in names:
            path = folder / name
            if not path.is_file():
                continue
            if name.endswith(".csv"):
                with open(path, newline="", encoding="utf-8") as f:
                    records = list(csv.DictReader(f))
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    data = data.get("rows", data.get("results", []))
                records = data if isinstance(data, list) else []
            records = [r for r in records if isinstance(r, dict)]
            if any(r.get("case") == "mean" for r in records):  # per-case rows plus means
                records = [r for r in records if r.get("case") == "mean"
                           and r.get("class", "foreground") == "foreground"]
            points: dict[tuple[str, float], list[float]] = {}
            for r in records:
                sigma, dice = _number(r.get("sigma")), _number(r.get("dice"))
                if sigma is not None and dice is not None and not math.isnan(dice):
                    points.setdefault((str(r.get("model", "model")), sigma), []).append(dice)
            if points:
                return [{"model": m, "sigma": x, "dice": sum(v) / len(v)}
                        for (m, x), v in points.items()], path
    return [], None


def _label_files(folder: Path) -> dict[str, Path]:
    """Case name -> label map file: the image files directly in a prediction folder."""
    found = {}
    for path in sorted(folder.iterdir()):
        ending = file_ending(path)
        if path.is_file() and not path.name.startswith(".") and ending in SUPPORTED_FORMATS:
            found[path.name[: -len(ending)]] = path
    return found


def _case_name(entry: dict) -> str | None:
    for key in ("prediction_file", "reference_file"):
        if entry.get(key):
            name = Path(entry[key]).name
            return name[: -len(file_ending(name))] if file_ending(name) else name
    return None


def _image_cases(images: Path | None, ending: str, num_channels: int | None) -> dict[str, Case]:
    if images is None:
        return {}
    if images.is_file():  # named as `ldseg predict` names a single file's case
        name = re.sub(r"_\d{4}$", "", images.name[: -len(file_ending(images))])
        return {name: Case(name, [images], None)}
    if not images.is_dir():
        raise LdsegError(f"{images}: image folder not found")
    return {c.name: c for c in find_image_cases(images, ending, num_channels)}


def _dataset(dataset_json: Path | None):
    if dataset_json is None:
        return None
    root = dataset_json if dataset_json.is_dir() else dataset_json.parent
    return load_dataset_spec(root)


def _compute_summary(cases: list[CaseFiles], labels: list[int], names: list[str]) -> dict:
    per_case = []
    for case in cases:
        pred, _ = read_image(case.prediction)
        ref, geometry = read_image(case.reference)
        per_case.append({"metrics": case_metrics(pred[0], ref[0], labels, geometry.spacing),
                         "prediction_file": str(case.prediction),
                         "reference_file": str(case.reference)})
    return summarize(per_case, labels, dict(enumerate(names)))


def _robustness(given: Path | None, folders: list[Path]) -> tuple[list[dict], Path | None]:
    """The robustness points of `given` (a file or folder), else of the first folder with
    a robustness file."""
    if given is None:
        return read_robustness(folders)
    found = (read_robustness([given.parent], (given.name,)) if given.is_file()
             else read_robustness([given]))
    if not found[0]:
        raise LdsegError(f"{given}: no robustness.csv/.json with model, sigma and dice")
    return found


def _add_cases(s: Sources, reference: Path | None, summary: Path | None,
               image_dirs: list[Path]) -> None:
    """The predicted cases with their images, references, uncertainty and metrics, worst
    first; metrics are computed when there is no summary.json but there are references."""
    labels = _label_files(s.folder)
    if not labels:
        raise LdsegError(f"{s.folder}: no segmentations found (neither a run folder nor a "
                         "prediction folder of 'ldseg predict')")
    summary_path = summary or s.folder / SUMMARY_FILE
    s.summary = load_summary(summary_path) if summary_path.is_file() else None
    by_name = {_case_name(e): e for e in (s.summary or {}).get("metric_per_case", [])}
    ending = file_ending(next(iter(labels.values())))
    channels = s.config.model.in_channels if s.config else None
    known: dict[str, Case] = {}
    for image_dir in reversed(image_dirs):  # the first folder wins
        known.update(_image_cases(image_dir, ending, channels))
    for name, pred_file in labels.items():
        entry = by_name.get(name) or {}
        ref = reference / pred_file.name if reference is not None else (
            Path(entry["reference_file"]) if entry.get("reference_file") else None)
        unc = s.folder / "uncertainty" / f"{name}{uncertainty_ending(ending)}"
        s.cases.append(CaseFiles(name, pred_file, known.get(name),
                                 ref if ref is not None and ref.is_file() else None,
                                 unc if unc.is_file() else None, entry.get("metrics")))
    if not s.class_names:  # no dataset.json and no model: name the labels found
        files = [c.prediction for c in s.cases] + [c.reference for c in s.cases if c.reference]
        top = max(int(read_image(f)[0].max()) for f in files)
        s.class_names = ["background"] + [f"label {i}" for i in range(1, max(top, 1) + 1)]
    scored = [c for c in s.cases if c.reference is not None]
    if s.summary is None and scored:
        s.summary = _compute_summary(scored, list(range(1, len(s.class_names))), s.class_names)
        for case, entry in zip(scored, s.summary["metric_per_case"], strict=True):
            case.metrics = entry["metrics"]
    s.cases.sort(key=lambda c: (math.isnan(c.mean_dice), c.mean_dice, c.name))


def find_sources(
    path: Path,
    *,
    reference: Path | None = None,
    model: Path | None = None,
    dataset_json: Path | None = None,
    images: Path | None = None,
    summary: Path | None = None,
    robustness: Path | None = None,
    checkpoint: str = "best",
) -> Sources:
    """Gather a report's inputs from a run folder or a prediction folder (see module doc)."""
    folder = Path(path)
    if not folder.is_dir():
        raise LdsegError(f"{folder}: folder not found (give a run or a prediction folder)")
    is_run = any((folder / n).is_file() for n in
                 ("model_best.safetensors", "model_last.safetensors", "log.csv"))
    info = read_json(folder / PREDICTION_JSON) if (folder / PREDICTION_JSON).is_file() else {}
    model_file = None
    if model is not None:
        model_file = resolve_model_file(Path(model), checkpoint)
    elif info.get("model") and Path(info["model"]).is_file():
        model_file = Path(info["model"])
    elif is_run:
        model_file = resolve_model_file(folder, checkpoint)
    config, weights = None, 0
    if model_file is not None:
        config, tensors, _ = load_model_file(model_file)
        weights = sum(t.numel() for t in tensors.values())
    spec = _dataset(Path(dataset_json) if dataset_json else None)
    class_names = list(spec.class_names if spec else config.class_names if config else ())
    channel_names = list(spec.channel_names if spec else config.channel_names if config else ())
    name = spec.name if spec else config.dataset_name if config else ""
    s = Sources(folder, "run" if is_run else "prediction", model_file, config, weights, info,
                name, class_names, channel_names)
    run_dir = model_file.parent if model_file is not None else None
    s.history = read_log(run_dir / "log.csv") if run_dir else []
    s.robustness, s.robustness_file = _robustness(
        Path(robustness) if robustness else None,
        [folder] + ([run_dir] if run_dir and run_dir != folder else []))
    if images is not None and not Path(images).exists():
        raise LdsegError(f"{images}: image folder not found")
    if images is None and info.get("input"):
        images = Path(info["input"])
    image_dirs = [Path(images)] if images is not None else []
    if spec is not None:
        image_dirs += [spec.root / "imagesTs", spec.root / "imagesTr"]
    image_dirs = [d for d in image_dirs if d.exists()]
    if not is_run:
        _add_cases(s, Path(reference) if reference else None,
                   Path(summary) if summary else None, image_dirs)
    elif image_dirs:  # a run: its reverse diffusion shows the first image found
        ending = config.file_ending if config else spec.file_ending if spec else ".png"
        found = _image_cases(image_dirs[0], ending, config.model.in_channels if config else None)
        s.extra_image = next(iter(found.values()), None)
    return s
