"""Per-case, per-class overlap, surface and volume metrics, summarised as nnU-Net v2's `summary.json`.

Following nnU-Net's schema (and its conventions) lets results from ldseg and nnU-Net be
compared with the same scripts. Every class entry holds nnU-Net's keys (`Dice`, `IoU`, `TP`,
`FP`, `FN`, `TN`, `n_pred`, `n_ref`) plus:

- `HD95`: 95th percentile symmetric Hausdorff distance in mm (MONAI's
  `compute_hausdorff_distance`, `percentile=95`: the 95th percentile, linearly interpolated, of
  the distances from prediction to reference boundary and of those from reference to
  prediction boundary, whichever is larger);
- `ASSD`: average symmetric surface distance in mm (MONAI's `compute_average_surface_distance`,
  `symmetric=True`: the mean of both sets of boundary distances pooled together);
- `NSD`: normalised surface Dice (MONAI's `compute_surface_dice`): the fraction of boundary
  voxels of both masks lying within the tolerance (default 1 mm, `nsd_tolerance_mm`) of the
  other mask's boundary;
- `VolumePred_mm3`, `VolumeRef_mm3`: voxel counts times the voxel volume;
- `VolumeDifference`: relative, `(V_pred - V_ref) / V_ref`; positive means over-segmentation.

Boundaries and distances are MONAI's: a mask's boundary is the mask minus its binary erosion
(scipy's default cross-shaped structuring element, i.e. 4-connectivity in 2D and 6 in 3D, with
everything outside the image counting as background), and a distance is the Euclidean distance
between boundary voxel centres, each axis scaled by its spacing (read from the reference
image; 1 per axis where it has none, e.g. PNG). Distances are computed on a crop around the
union of the two masks plus one voxel, which changes nothing (erosion treats the outside as
background either way) and keeps large volumes fast.

Rules for empty masks:

- a class absent from both reference and prediction scores NaN in every metric (nothing to get
  right; volumes and voxel counts stay the measured zeros), and NaN cases are left out of the
  per-class mean (`nanmean`);
- a structure must never improve an average by being missed or invented: a class present in
  the reference but not predicted, or predicted where the reference has none, scores Dice 0,
  IoU 0, NSD 0 and HD95 = ASSD = the image diagonal in mm, `sqrt(sum((shape_i * spacing_i)^2))`
  (MONAI would give inf or NaN there, which a mean cannot use);
- `VolumeDifference` is NaN when the reference volume is 0 (a relative error of nothing);
- `foreground_mean` is the plain mean over the foreground classes of the per-class means, so
  a class that is NaN in every case makes it NaN, as in nnU-Net;
- NaN is written as JSON's non-standard `NaN` literal (Python's `json` default, as nnU-Net
  does); `load_summary` and any `json.load` read it back. `summary.csv` writes `NaN` too.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from ldseg.data.imageio import SUPPORTED_FORMATS, Geometry, file_ending, read_image
from ldseg.errors import LdsegError
from ldseg.files import atomic_write

# nnU-Net's keys in the order it builds them, then ours (the JSON itself has sorted keys).
NNUNET_KEYS = ("Dice", "IoU", "FN", "FP", "TP", "TN", "n_pred", "n_ref")
SURFACE_KEYS = ("HD95", "ASSD", "NSD")
VOLUME_KEYS = ("VolumeDifference", "VolumePred_mm3", "VolumeRef_mm3")
METRIC_KEYS = NNUNET_KEYS + SURFACE_KEYS + VOLUME_KEYS
SUMMARY_FILE = "summary.json"
DEFAULT_NSD_TOLERANCE_MM = 1.0

# Up to this label value, np.bincount (linear time) counts voxels; above it, or for negative
# values, np.unique (a sort) does, so that odd label maps cost time but never huge memory.
_BINCOUNT_LIMIT = 1 << 20
_MAX_LISTED = 10


@dataclass(frozen=True)
class _Counts:
    """Voxel counts per label value for one reference/prediction pair.

    Counting every value once (rather than building masks per class) lets labels be decided
    after all cases are read, so each image is read only once.
    """

    size: int
    n_ref: dict[int, int]
    n_pred: dict[int, int]
    tp: dict[int, int]

    def metrics(self, label: int) -> dict[str, float]:
        tp = self.tp.get(label, 0)
        n_ref = self.n_ref.get(label, 0)
        n_pred = self.n_pred.get(label, 0)
        fp = n_pred - tp
        fn = n_ref - tp
        tn = self.size - tp - fp - fn
        if tp + fp + fn == 0:
            dice = iou = math.nan
        else:
            dice = 2 * tp / (2 * tp + fp + fn)
            iou = tp / (tp + fp + fn)
        return {"Dice": dice, "IoU": iou, "FN": fn, "FP": fp, "TP": tp, "TN": tn,
                "n_pred": n_pred, "n_ref": n_ref}


def _value_counts(array: np.ndarray) -> dict[int, int]:
    """How many voxels hold each value (int64 counts, returned as Python ints)."""
    flat = array.ravel()
    if flat.size == 0:
        return {}
    low, high = int(flat.min()), int(flat.max())
    if low >= 0 and high <= _BINCOUNT_LIMIT:
        if flat.dtype == np.uint64:  # the one integer type bincount refuses to cast
            flat = flat.astype(np.int64)
        counts = np.bincount(flat)
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist(), strict=True))
    values, counts = np.unique(flat, return_counts=True)
    return dict(zip(values.tolist(), counts.astype(np.int64).tolist(), strict=True))


def _as_label_map(array: np.ndarray, source: str) -> np.ndarray:
    """Check that an array holds integer labels; floats with integral values are accepted.

    Label maps are often stored as float NIfTI; comparing such floats is exact, but a
    probability map or a resampled (interpolated) label map would silently score nonsense.
    """
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise LdsegError(f"{source}: label values too large")
        return array
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise LdsegError(f"{source}: not a label map (contains NaN or infinite values)")
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            raise LdsegError(f"{source}: not a label map (non-integer values such as {example:g})")
        return array.astype(np.int64)
    raise LdsegError(f"{source}: not a label map (unsupported data type {array.dtype})")


def _count(pred: np.ndarray, ref: np.ndarray, pred_source: str, ref_source: str) -> _Counts:
    if pred.shape != ref.shape:
        raise LdsegError(
            f"{pred_source}: prediction shape {tuple(pred.shape)} differs from reference "
            f"shape {tuple(ref.shape)} ({ref_source})"
        )
    pred = _as_label_map(pred, pred_source)
    ref = _as_label_map(ref, ref_source)
    agree = ref == pred
    return _Counts(
        size=int(ref.size),
        n_ref=_value_counts(ref),
        n_pred=_value_counts(pred),
        tp=_value_counts(ref[agree]),
    )


def _check_labels(labels: Sequence[int]) -> list[int]:
    checked = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0:
            raise LdsegError(f"invalid label {label!r}: labels are non-negative integers")
        checked.append(int(label))
    return sorted(set(checked))


def case_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Dice, IoU and the voxel counts behind them, per label, keyed by `str(label)`.

    Counts are kept (not just the scores) because nnU-Net's schema has them, and they let a
    reader pool cases (e.g. a global Dice) without re-reading the images.
    """
    counts = _count(np.asarray(pred), np.asarray(ref), "prediction", "reference")
    return {str(label): counts.metrics(label) for label in _check_labels(labels)}


def _nanmean(values: Sequence[Any]) -> float:
    """Mean over the non-NaN values; NaN (without numpy's warning) when there are none."""
    array = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else math.nan


def summarize(
    per_case: list[dict],
    labels: Sequence[int],
    class_names: Mapping[int, str] | None = None,
) -> dict:
    """Build the nnU-Net summary (`metric_per_case`, `mean`, `foreground_mean`).

    Entries of `per_case` are `{"metrics": case_metrics(...), "prediction_file": ...,
    "reference_file": ...}`; a bare `case_metrics` dict is accepted too (its file names are
    then None). `class_names` adds an extra `class_names` key, ignored by nnU-Net's tools.
    """
    labels = _check_labels(labels)
    cases = []
    for entry in per_case:
        if "metrics" in entry:
            cases.append({"metrics": entry["metrics"],
                          "prediction_file": entry.get("prediction_file"),
                          "reference_file": entry.get("reference_file")})
        else:
            cases.append({"metrics": entry, "prediction_file": None, "reference_file": None})
    mean: dict[str, dict[str, float]] = {}
    for label in labels:
        key = str(label)
        missing = [i for i, case in enumerate(cases) if key not in case["metrics"]]
        if missing:
            raise LdsegError(f"case {missing[0]} has no metrics for label {label}")
        mean[key] = {m: _nanmean([case["metrics"][key][m] for case in cases]) for m in METRIC_KEYS}
    foreground = [str(label) for label in labels if label != 0]
    foreground_mean = {
        m: float(np.mean([mean[k][m] for k in foreground])) if foreground else math.nan
        for m in METRIC_KEYS
    }
    summary: dict[str, Any] = {
        "metric_per_case": cases,
        "mean": mean,
        "foreground_mean": foreground_mean,
    }
    if class_names:
        names = {int(k): str(v) for k, v in class_names.items()}
        summary["class_names"] = {str(label): names[label] for label in labels if label in names}
    return summary


def _normalise_ending(ending: str) -> str:
    ending = ending.strip().lower()
    return ending if ending.startswith(".") else f".{ending}"


def _image_files(folder: Path, ending: str) -> dict[str, Path]:
    """Case name -> file, for plain files in `folder` with `ending`.

    Subfolders, other formats and hidden files (such as the temporary files of an atomic
    write in progress) are skipped: a prediction folder also holds `uncertainty/`, previews
    and `summary.json`.
    """
    found = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or file_ending(path) != ending:
            continue
        found[path.name[: -len(ending)]] = path
    return found


def _detect_ending(ref_dir: Path) -> str:
    endings = sorted({
        file_ending(p) for p in ref_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and file_ending(p) in SUPPORTED_FORMATS
    })
    if not endings:
        raise LdsegError(
            f"{ref_dir}: no reference images found (supported: {', '.join(SUPPORTED_FORMATS)})"
        )
    if len(endings) > 1:
        raise LdsegError(
            f"{ref_dir}: references in several formats ({', '.join(endings)}); "
            "give the file ending to use"
        )
    return endings[0]


def _read_label_map(path: Path) -> np.ndarray:
    array, _ = read_image(path)
    if array.shape[0] != 1:
        raise LdsegError(
            f"{path}: expected a single-channel label map, found {array.shape[0]} channels"
        )
    return array[0]


def _list_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown}, ... and {more} more" if more > 0 else shown


def write_summary(summary: dict, output_file: str | Path) -> Path:
    """Write a summary as nnU-Net does (sorted keys, indent 4, NaN literal), atomically.

    Atomic (temporary file, then `os.replace`) so that an interrupted run never leaves a
    truncated summary.json that later tools would choke on.
    """
    path = Path(output_file)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(summary, sort_keys=True, indent=4, allow_nan=True) + "\n",
                       encoding="utf-8")
    return path


def load_summary(path: str | Path) -> dict:
    """Read a summary.json (ours or nnU-Net's); NaN literals come back as float NaN."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LdsegError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LdsegError(f"{path}: cannot read summary ({exc})") from None
    if not isinstance(summary, dict) or not {"metric_per_case", "mean"} <= summary.keys():
        raise LdsegError(f"{path}: not a summary.json (no 'metric_per_case'/'mean')")
    return summary


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    labels: Sequence[int] | None = None,
    class_names: Mapping[int, str] | None = None,
    file_ending: str | None = None,
    output_file: str | Path | None = None,
) -> dict:
    """Score every reference in `ref_dir` against the same-named file in `pred_dir`.

    Evaluated classes are the values > 0 found in the references plus `labels` (pass the
    dataset.json labels so that a class absent from every reference still gets a row and
    counts its false positives). Predictions without a reference are ignored (a prediction
    folder may hold unlabelled cases); a reference without a prediction is an error, since
    silently skipping it would inflate the scores. The summary is written to `output_file`
    (default `pred_dir/summary.json`) and returned.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise LdsegError(f"{folder}: {what} folder not found")
    ending = _normalise_ending(file_ending) if file_ending else _detect_ending(ref_dir)
    references = _image_files(ref_dir, ending)
    if not references:
        raise LdsegError(f"{ref_dir}: no reference images ending in '{ending}'")
    predictions = _image_files(pred_dir, ending)
    missing = [case for case in references if case not in predictions]
    if missing:
        raise LdsegError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(references)} reference "
            f"case(s): {_list_names(missing)}"
        )

    counted: list[tuple[str, str, _Counts]] = []
    found: set[int] = set()
    for case, ref_path in references.items():
        pred_path = predictions[case]
        counts = _count(_read_label_map(pred_path), _read_label_map(ref_path),
                        str(pred_path), str(ref_path))
        found.update(v for v, n in counts.n_ref.items() if v > 0 and n > 0)
        counted.append((str(pred_path), str(ref_path), counts))

    evaluated = sorted(found | set(_check_labels(labels or ())))
    if not evaluated:
        raise LdsegError(
            f"{ref_dir}: the references contain no foreground labels; "
            "give the labels (dataset.json) to evaluate"
        )
    per_case = [
        {"metrics": {str(label): counts.metrics(label) for label in evaluated},
         "prediction_file": pred_file, "reference_file": ref_file}
        for pred_file, ref_file, counts in counted
    ]
    summary = summarize(per_case, evaluated, class_names)
    write_summary(summary, output_file if output_file is not None else pred_dir / SUMMARY_FILE)
    return summary


def load_dataset_labels(dataset_json: str | Path) -> tuple[list[int], dict[int, str]]:
    """Foreground labels and their names from an nnU-Net dataset.json.

    Reads v2's `{"background": 0, "femur": 1}` and v1's `{"0": "background", "1": "femur"}`.
    Region-based labels and ignore labels are refused rather than scored wrongly: both need
    masks this evaluator does not build.
    """
    path = Path(dataset_json)
    if not path.is_file():
        raise LdsegError(f"{path}: dataset.json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LdsegError(f"{path}: cannot read dataset.json ({exc})") from None
    raw = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise LdsegError(f"{path}: no 'labels' mapping")

    pairs: list[tuple[int, str]] = []
    if all(isinstance(v, str) for v in raw.values()):  # v1: value -> name
        for key, name in raw.items():
            try:
                pairs.append((int(key), name))
            except ValueError:
                raise LdsegError(f"{path}: label key '{key}' is not an integer") from None
    else:  # v2: name -> value
        for name, value in raw.items():
            if name == "ignore":
                raise LdsegError(f"{path}: ignore labels are not supported")
            if isinstance(value, list):
                raise LdsegError(f"{path}: region-based labels ('{name}') are not supported")
            if isinstance(value, bool) or not isinstance(value, int):
                raise LdsegError(f"{path}: label '{name}' has non-integer value {value!r}")
            pairs.append((value, str(name)))

    values = [value for value, _ in pairs]
    if any(value < 0 for value in values):
        raise LdsegError(f"{path}: negative label value")
    if len(set(values)) != len(values):
        duplicated = sorted({v for v in values if values.count(v) > 1})
        raise LdsegError(f"{path}: label value(s) {duplicated} used more than once")
    names = {value: name for value, name in pairs if value > 0}
    if not names:
        raise LdsegError(f"{path}: no foreground labels")
    return sorted(names), names


def _fmt(value: Any, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a".rjust(width)
    return f"{value:.4f}".rjust(width)


def _case_name(entry: dict, index: int) -> str:
    for key in ("reference_file", "prediction_file"):
        if entry.get(key):
            name = Path(entry[key]).name
            ending = file_ending(name)
            return name[: -len(ending)] if ending and name.lower().endswith(ending) else name
    return f"case {index}"


def format_table(summary: dict) -> str:
    """A fixed-width table: per case Dice and IoU for each class, then the means.

    Meant for the terminal, where summary.json's nesting is hard to scan.
    """
    keys = sorted(summary["mean"], key=int)
    names = summary.get("class_names") or {}
    num_w = 7
    headers = [f"{names[k]} ({k})" if k in names else f"label {k}" for k in keys]
    group_w = [max(len(h), 2 * num_w + 1) for h in headers]
    cases = summary["metric_per_case"]
    row_names = [_case_name(entry, i) for i, entry in enumerate(cases)]
    name_w = max([len("case"), len("mean"), *map(len, row_names)])

    def row(label: str, metrics: Mapping[str, Mapping[str, Any]]) -> str:
        cells = [
            (_fmt(metrics[k]["Dice"], num_w) + " " + _fmt(metrics[k]["IoU"], num_w)).rjust(w)
            for k, w in zip(keys, group_w, strict=True)
        ]
        return "  ".join([label.ljust(name_w), *cells]).rstrip()

    sub = [("Dice".rjust(num_w) + " " + "IoU".rjust(num_w)).rjust(w) for w in group_w]
    lines = [
        "  ".join(["case".ljust(name_w), *(h.rjust(w) for h, w in zip(headers, group_w,
                                                                       strict=True))]),
        "  ".join([" " * name_w, *sub]).rstrip(),
    ]
    rule = "-" * len(lines[0])
    lines.append(rule)
    lines.extend(row(name, entry["metrics"]) for name, entry in zip(row_names, cases, strict=True))
    lines.append(rule)
    lines.append(row("mean", summary["mean"]))
    fg = summary.get("foreground_mean") or {}
    if fg:
        lines.append(
            f"foreground mean: Dice {_fmt(fg.get('Dice'), 0)}  IoU {_fmt(fg.get('IoU'), 0)}"
        )
    if "n/a" in "\n".join(lines):
        lines.append("n/a: class absent from both reference and prediction")
    return "\n".join(lines)
