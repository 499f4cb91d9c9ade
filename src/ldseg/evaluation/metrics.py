"""Per-case, per-class overlap, surface and volume metrics in nnU-Net v2's `summary.json` format.

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

When the prediction folder holds `ldseg predict`'s uncertainty outputs, `evaluate_folders`
adds (definitions in `ldseg.evaluation.uncertainty`): `ECE` per foreground class beside Dice
(from `probabilities/`), and per case an `uncertainty` entry with `UEO`, `UEO_threshold`,
`UEO_fixed` (from `uncertainty/`) and `GED` (from `samples/`), averaged over the cases where
present into a top-level `uncertainty_mean` (not into `mean`, whose keys nnU-Net's tools read
as labels).
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
from ldseg.evaluation.uncertainty import CASE_KEYS as UNCERTAINTY_CASE_KEYS
from ldseg.evaluation.uncertainty import (
    DEFAULT_ECE_BINS,
    DEFAULT_UEO_THRESHOLD,
    model_num_classes,
    score_case_uncertainty,
)
from ldseg.files import atomic_write

# nnU-Net's keys in the order it builds them, then ours (the JSON itself has sorted keys).
NNUNET_KEYS = ("Dice", "IoU", "FN", "FP", "TP", "TN", "n_pred", "n_ref")
SURFACE_KEYS = ("HD95", "ASSD", "NSD")
VOLUME_KEYS = ("VolumeDifference", "VolumePred_mm3", "VolumeRef_mm3")
METRIC_KEYS = NNUNET_KEYS + SURFACE_KEYS + VOLUME_KEYS
CLASS_UNCERTAINTY_KEYS = ("ECE",)  # per class, only with probabilities (see the docstring)
SUMMARY_FILE = "summary.json"
DEFAULT_NSD_TOLERANCE_MM = 1.0

# Up to this label value, np.bincount (linear time) counts voxels; above it, or for negative
# values, np.unique (a sort) does, so that odd label maps cost time but never huge memory.
_BINCOUNT_LIMIT = 1 << 20
_MAX_LISTED = 10


@dataclass(frozen=True)
class _Counts:
    """Voxel counts per label value for one reference/prediction pair, and surface distances.

    Counting every value once (rather than building masks per class) lets labels be decided
    after all cases are read, so each image is read only once. Surface distances are only
    needed for labels present in both images (every other case follows from the counts, see
    `metrics`), and such a label is always one the caller can name beforehand: a value of the
    reference or a requested label.
    """

    size: int
    n_ref: dict[int, int]
    n_pred: dict[int, int]
    tp: dict[int, int]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    surface: dict[int, tuple[float, float, float]]  # label -> (HD95, ASSD, NSD)

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
        if n_ref == 0 and n_pred == 0:
            hd95 = assd = nsd = math.nan
        elif n_ref == 0 or n_pred == 0:  # missed or invented: worst distance, no agreement
            hd95 = assd = _diagonal_mm(self.shape, self.spacing)
            nsd = 0.0
        else:
            hd95, assd, nsd = self.surface[label]
        voxel_mm3 = math.prod(self.spacing)
        volume_pred, volume_ref = n_pred * voxel_mm3, n_ref * voxel_mm3
        volume_difference = (volume_pred - volume_ref) / volume_ref if n_ref else math.nan
        return {"Dice": dice, "IoU": iou, "FN": fn, "FP": fp, "TP": tp, "TN": tn,
                "n_pred": n_pred, "n_ref": n_ref, "HD95": hd95, "ASSD": assd, "NSD": nsd,
                "VolumeDifference": volume_difference, "VolumePred_mm3": volume_pred,
                "VolumeRef_mm3": volume_ref}


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def _union_crop(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of both masks plus one voxel each side, clipped to the image."""
    union = pred_mask | ref_mask
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, union.shape[axis])))
    return tuple(box)


def _surface_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float
) -> tuple[float, float, float]:
    """HD95, ASSD (mm) and NSD of two non-empty boolean masks, by MONAI, on their union's crop.

    MONAI takes one-hot (batch, class, *spatial) inputs; a single class with
    `include_background=True` is exactly this mask. Cropping first matters: MONAI's own crop
    (in `get_mask_edges`) runs only after it has converted the full volume, three times over.
    """
    box = _union_crop(pred_mask, ref_mask)
    y_pred = torch.from_numpy(pred_mask[box].astype(np.float32))[None, None]
    y_ref = torch.from_numpy(ref_mask[box].astype(np.float32))[None, None]
    axes = list(spacing)
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` argument internally.
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y_ref, include_background=True, percentile=95,
                                          spacing=axes)
        assd = compute_average_surface_distance(y_pred, y_ref, include_background=True,
                                                symmetric=True, spacing=axes)
        nsd = compute_surface_dice(y_pred, y_ref, [tolerance_mm], include_background=True,
                                   spacing=axes)
    return float(hd95.item()), float(assd.item()), float(nsd.item())


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


def _check_spacing(
    spacing: float | Sequence[float] | None, ndim: int, source: str
) -> tuple[float, ...]:
    """Spacing per array axis in mm: None means 1 per axis, a single number is isotropic."""
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = (float(spacing),) * ndim if np.ndim(spacing) == 0 else tuple(map(float, spacing))
    except (TypeError, ValueError):
        raise LdsegError(f"{source}: invalid spacing {spacing!r}") from None
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise LdsegError(
            f"{source}: invalid spacing {values} for a {ndim}D image "
            "(one positive value per axis)"
        )
    return values


def _check_tolerance(tolerance_mm: float) -> float:
    try:
        value = float(tolerance_mm)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise LdsegError(f"invalid NSD tolerance {tolerance_mm!r}: a distance >= 0 in mm")
    return value


def _count(
    pred: np.ndarray,
    ref: np.ndarray,
    pred_source: str,
    ref_source: str,
    *,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    labels: Iterable[int] = (),
    reference_labels: bool = False,
) -> _Counts:
    """Count voxels, and measure surfaces for `labels` (plus, with `reference_labels`, every
    foreground value of the reference) wherever both images contain the label."""
    if pred.shape != ref.shape:
        raise LdsegError(
            f"{pred_source}: prediction shape {tuple(pred.shape)} differs from reference "
            f"shape {tuple(ref.shape)} ({ref_source})"
        )
    if ref.ndim not in (2, 3):
        raise LdsegError(f"{ref_source}: expected a 2D or 3D label map, found {ref.ndim}D")
    pred = _as_label_map(pred, pred_source)
    ref = _as_label_map(ref, ref_source)
    spacing = _check_spacing(spacing, ref.ndim, ref_source)
    agree = ref == pred
    n_ref, n_pred = _value_counts(ref), _value_counts(pred)
    wanted = set(labels) | ({v for v in n_ref if v > 0} if reference_labels else set())
    surface = {
        label: _surface_metrics(pred == label, ref == label, spacing, nsd_tolerance_mm)
        for label in sorted(wanted) if n_ref.get(label, 0) and n_pred.get(label, 0)
    }
    return _Counts(
        size=int(ref.size),
        n_ref=n_ref,
        n_pred=n_pred,
        tp=_value_counts(ref[agree]),
        shape=tuple(int(n) for n in ref.shape),
        spacing=spacing,
        surface=surface,
    )


def _check_labels(labels: Sequence[int]) -> list[int]:
    checked = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0:
            raise LdsegError(f"invalid label {label!r}: labels are non-negative integers")
        checked.append(int(label))
    return sorted(set(checked))


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[str, dict[str, float]]:
    """Overlap, surface and volume metrics and the voxel counts behind them, per label, keyed
    by `str(label)` (see the module docstring for the definitions and the empty-mask rules).

    `spacing` is in mm per array axis (None: 1 per axis). Counts are kept (not just the
    scores) because nnU-Net's schema has them, and they let a reader pool cases (e.g. a global
    Dice) without re-reading the images.
    """
    labels = _check_labels(labels)
    counts = _count(np.asarray(pred), np.asarray(ref), "prediction", "reference",
                    spacing=spacing, nsd_tolerance_mm=_check_tolerance(nsd_tolerance_mm),
                    labels=labels)
    return {str(label): counts.metrics(label) for label in labels}


def _nanmean(values: Sequence[Any]) -> float:
    """Mean over the non-NaN values; NaN (without numpy's warning) when there are none."""
    array = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else math.nan


def summarize(
    per_case: list[dict],
    labels: Sequence[int],
    class_names: Mapping[int, str] | None = None,
    nsd_tolerance_mm: float | None = None,
) -> dict:
    """Build the nnU-Net summary (`metric_per_case`, `mean`, `foreground_mean`).

    Entries of `per_case` are `{"metrics": case_metrics(...), "prediction_file": ...,
    "reference_file": ...}`; a bare `case_metrics` dict is accepted too (its file names are
    then None). Every metric is averaged like nnU-Net's Dice: per class over the cases where
    it is not NaN, then `foreground_mean` over the foreground classes. Metrics absent from
    every case (e.g. surface metrics in an nnU-Net summary) are left out; a metric missing in
    some cases only counts as NaN there. `class_names` adds an extra `class_names` key and
    `nsd_tolerance_mm` an extra `nsd_tolerance_mm` key, both ignored by nnU-Net's tools.
    """
    labels = _check_labels(labels)
    cases = []
    for entry in per_case:
        if "metrics" in entry:
            cases.append({"metrics": entry["metrics"],
                          "prediction_file": entry.get("prediction_file"),
                          "reference_file": entry.get("reference_file")})
            if "uncertainty" in entry:
                cases[-1]["uncertainty"] = entry["uncertainty"]
        else:
            cases.append({"metrics": entry, "prediction_file": None, "reference_file": None})
    for label in labels:
        missing = [i for i, case in enumerate(cases) if str(label) not in case["metrics"]]
        if missing:
            raise LdsegError(f"case {missing[0]} has no metrics for label {label}")
    keys = [m for m in METRIC_KEYS + CLASS_UNCERTAINTY_KEYS
            if any(m in case["metrics"][str(label)] for case in cases for label in labels)]
    mean: dict[str, dict[str, float]] = {
        str(label): {m: _nanmean([case["metrics"][str(label)].get(m) for case in cases])
                     for m in keys}
        for label in labels
    }
    foreground = [str(label) for label in labels if label != 0]
    foreground_mean = {
        m: float(np.mean([mean[k][m] for k in foreground])) if foreground else math.nan
        for m in keys
    }
    summary: dict[str, Any] = {
        "metric_per_case": cases,
        "mean": mean,
        "foreground_mean": foreground_mean,
    }
    scored = [case["uncertainty"] for case in cases if "uncertainty" in case]
    if scored:
        summary["uncertainty_mean"] = {
            m: _nanmean([u.get(m) for u in scored]) for m in UNCERTAINTY_CASE_KEYS
            if any(m in u for u in scored)
        }
    if class_names:
        names = {int(k): str(v) for k, v in class_names.items()}
        summary["class_names"] = {str(label): names[label] for label in labels if label in names}
    if nsd_tolerance_mm is not None:
        summary["nsd_tolerance_mm"] = _check_tolerance(nsd_tolerance_mm)
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


def _read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    array, geometry = read_image(path)
    if array.shape[0] != 1:
        raise LdsegError(
            f"{path}: expected a single-channel label map, found {array.shape[0]} channels"
        )
    return array[0], geometry


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


def csv_path_for(summary_file: str | Path) -> Path:
    """Where the CSV beside a summary goes: `summary.json` -> `summary.csv`."""
    path = Path(summary_file)
    csv_file = path.with_suffix(".csv")
    return csv_file if csv_file != path else path.with_name(path.name + ".csv")


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return value


def write_summary_csv(summary: dict, output_file: str | Path) -> Path:
    """Write a summary as a flat table, atomically: one row per case and class, then a `mean`
    row per class and a `foreground_mean` row (empty label), every metric a column.

    Columns: `case` (file name without ending), `label`, `class_name`, the metrics, the
    per-case uncertainty scores if any (`UEO`, ..., `GED`: the same on every row of a case;
    `uncertainty_mean` on the mean rows), then `prediction_file` and `reference_file`. NaN is
    written as `NaN`.
    """
    path = Path(output_file)
    labels = sorted(summary["mean"], key=int)
    keys = [m for m in METRIC_KEYS + CLASS_UNCERTAINTY_KEYS
            if any(m in v for v in summary["mean"].values())]
    case_mean = summary.get("uncertainty_mean") or {}
    case_keys = [m for m in UNCERTAINTY_CASE_KEYS if m in case_mean]
    names = summary.get("class_names") or {}
    rows: list[list[Any]] = [
        ["case", "label", "class_name", *keys, *case_keys, "prediction_file", "reference_file"]
    ]
    for i, entry in enumerate(summary["metric_per_case"]):
        case = _case_name(entry, i)
        scores = [_csv_value(entry.get("uncertainty", {}).get(m)) for m in case_keys]
        for label in labels:
            metrics = entry["metrics"][label]
            rows.append([case, label, names.get(label, ""),
                         *(_csv_value(metrics.get(m)) for m in keys), *scores,
                         entry.get("prediction_file") or "", entry.get("reference_file") or ""])
    means = [_csv_value(case_mean.get(m)) for m in case_keys]
    for label in labels:
        rows.append(["mean", label, names.get(label, ""),
                     *(_csv_value(summary["mean"][label].get(m)) for m in keys), *means, "", ""])
    foreground = summary.get("foreground_mean") or {}
    rows.append(["foreground_mean", "", "", *(_csv_value(foreground.get(m)) for m in keys),
                 *means, "", ""])
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
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
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    ece_bins: int = DEFAULT_ECE_BINS,
    ueo_threshold: float | None = None,
) -> dict:
    """Score every reference in `ref_dir` against the same-named file in `pred_dir`.

    Evaluated classes are the values > 0 found in the references plus `labels` (pass the
    dataset.json labels so that a class absent from every reference still gets a row and
    counts its false positives). Predictions without a reference are ignored (a prediction
    folder may hold unlabelled cases); a reference without a prediction is an error, since
    silently skipping it would inflate the scores. Distances and volumes use each
    reference's spacing; NSD counts boundary within `nsd_tolerance_mm`. The summary is
    written to `output_file` (default `pred_dir/summary.json`), the same as a flat table
    beside it (`summary.csv`, see `write_summary_csv`), and returned. Uncertainty outputs
    of `ldseg predict` found in `pred_dir` are scored too (see the module docstring), with
    `ece_bins` bins and UEO's fixed threshold `ueo_threshold` (default 0.5).
    """
    tolerance = _check_tolerance(nsd_tolerance_mm)
    if ece_bins < 1:
        raise LdsegError(f"invalid number of ECE bins {ece_bins}: at least 1")
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

    given = _check_labels(labels or ())
    counted: list[tuple[str, str, _Counts]] = []
    found: set[int] = set()
    num_classes = model_num_classes(pred_dir)
    uncertain: list[tuple[dict[int, float], dict[str, float]]] = []
    for case, ref_path in references.items():
        pred_path = predictions[case]
        ref, geometry = _read_label_map(ref_path)
        pred, _ = _read_label_map(pred_path)
        # Surfaces for this case's reference labels and the given ones suffice: a label
        # evaluated only because another case's reference has it is absent from this
        # reference, and so needs no distances (see `_Counts.metrics`).
        counts = _count(pred, ref, str(pred_path), str(ref_path), spacing=geometry.spacing,
                        nsd_tolerance_mm=tolerance, labels=given, reference_labels=True)
        found.update(v for v, n in counts.n_ref.items() if v > 0 and n > 0)
        counted.append((str(pred_path), str(ref_path), counts))
        uncertain.append(score_case_uncertainty(
            pred_dir, case, ending, pred, ref, num_classes=num_classes, ece_bins=ece_bins,
            ueo_threshold=ueo_threshold))

    evaluated = sorted(found | set(given))
    if not evaluated:
        raise LdsegError(
            f"{ref_dir}: the references contain no foreground labels; "
            "give the labels (dataset.json) to evaluate"
        )
    per_case = []
    for (pred_file, ref_file, counts), (ece, scores) in zip(counted, uncertain, strict=True):
        metrics = {str(label): counts.metrics(label) for label in evaluated}
        for label in evaluated if ece else ():
            metrics[str(label)]["ECE"] = ece.get(label, math.nan)
        per_case.append({"metrics": metrics, "prediction_file": pred_file,
                         "reference_file": ref_file, **({"uncertainty": scores} if scores else {})})
    summary = summarize(per_case, evaluated, class_names, nsd_tolerance_mm=tolerance)
    if any(ece for ece, _ in uncertain):
        summary["ece_bins"] = int(ece_bins)
    if any("UEO" in scores for _, scores in uncertain):
        summary["ueo_fixed_threshold"] = (DEFAULT_UEO_THRESHOLD if ueo_threshold is None
                                          else float(ueo_threshold))
    summary_file = Path(output_file) if output_file is not None else pred_dir / SUMMARY_FILE
    write_summary(summary, summary_file)
    write_summary_csv(summary, csv_path_for(summary_file))
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


def _fmt(value: Any, width: int, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a".rjust(width)
    return f"{value:.{digits}f}".rjust(width)


def _case_name(entry: dict, index: int) -> str:
    for key in ("reference_file", "prediction_file"):
        if entry.get(key):
            name = Path(entry[key]).name
            ending = file_ending(name)
            return name[: -len(ending)] if ending and name.lower().endswith(ending) else name
    return f"case {index}"


# Columns of `format_table` per class: metric, header, decimals; then per case, if present.
_TABLE_COLUMNS = (("Dice", "Dice", 4), ("HD95", "HD95", 2), ("NSD", "NSD", 4))
_ECE_COLUMN = ("ECE", "ECE", 4)
_CASE_COLUMNS = (("UEO", "UEO", 4), ("UEO_threshold", "at", 3), ("UEO_fixed", "UEO@t", 4),
                 ("GED", "GED", 4))


def format_table(summary: dict) -> str:
    """A fixed-width table: per case Dice, HD95 (mm) and NSD (and ECE) for each class, and the
    case's uncertainty scores if any, then the means.

    Meant for the terminal, where summary.json's nesting is hard to scan; IoU, ASSD and the
    volumes are in summary.json and summary.csv. A summary without surface metrics (e.g.
    nnU-Net's) shows n/a in their columns.
    """
    keys = sorted(summary["mean"], key=int)
    names = summary.get("class_names") or {}
    num_w = 7
    has_ece = any("ECE" in v for v in summary["mean"].values())
    columns = _TABLE_COLUMNS + ((_ECE_COLUMN,) if has_ece else ())
    case_mean = summary.get("uncertainty_mean") or {}
    case_columns = [c for c in _CASE_COLUMNS if c[0] in case_mean]
    ncol = len(columns)
    headers = [f"{names[k]} ({k})" if k in names else f"label {k}" for k in keys]
    group_w = [max(len(h), ncol * num_w + ncol - 1) for h in headers]
    if case_columns:
        headers.append("uncertainty")
        group_w.append(len(case_columns) * (num_w + 1) - 1)
    cases = summary["metric_per_case"]
    row_names = [_case_name(entry, i) for i, entry in enumerate(cases)]
    name_w = max([len("case"), len("mean"), *map(len, row_names)])

    def row(label: str, metrics: Mapping[str, Mapping[str, Any]],
            scores: Mapping[str, Any]) -> str:
        cells = [
            " ".join(_fmt(metrics[k].get(m), num_w, d) for m, _, d in columns).rjust(w)
            for k, w in zip(keys, group_w, strict=False)
        ]
        if case_columns:
            cells.append(" ".join(_fmt(scores.get(m), num_w, d) for m, _, d in case_columns))
        return "  ".join([label.ljust(name_w), *cells]).rstrip()

    sub = [" ".join(h.rjust(num_w) for _, h, _ in columns).rjust(w) for w in group_w[:len(keys)]]
    if case_columns:
        sub.append(" ".join(h.rjust(num_w) for _, h, _ in case_columns))
    lines = [
        "  ".join(["case".ljust(name_w), *(h.rjust(w) for h, w in zip(headers, group_w,
                                                                       strict=True))]),
        "  ".join([" " * name_w, *sub]).rstrip(),
    ]
    rule = "-" * len(lines[0])
    lines.append(rule)
    lines.extend(row(name, entry["metrics"], entry.get("uncertainty") or {})
                 for name, entry in zip(row_names, cases, strict=True))
    lines.append(rule)
    lines.append(row("mean", summary["mean"], case_mean))
    fg = summary.get("foreground_mean") or {}
    if fg:
        ece = f"  ECE {_fmt(fg.get('ECE'), 0)}" if has_ece else ""
        lines.append(
            f"foreground mean: Dice {_fmt(fg.get('Dice'), 0)}  "
            f"HD95 {_fmt(fg.get('HD95'), 0, 2)} mm  NSD {_fmt(fg.get('NSD'), 0)}{ece}"
        )
    tolerance = summary.get("nsd_tolerance_mm")
    at = f" within {tolerance:g} mm" if isinstance(tolerance, int | float) else ""
    lines.append(f"HD95: 95th percentile Hausdorff distance (mm); NSD: normalised surface Dice{at}")
    lines.append("a missed or spurious structure scores HD95 = the image diagonal and NSD 0")
    if has_ece:
        lines.append(f"ECE: expected calibration error of the mean probabilities "
                     f"({summary.get('ece_bins', DEFAULT_ECE_BINS)} bins, class vs rest)")
    if case_columns:
        fixed = summary.get("ueo_fixed_threshold", DEFAULT_UEO_THRESHOLD)
        lines.append(f"UEO: Dice of (entropy / log K >= threshold) with the errors, at the best "
                     f"threshold ('at') and at {fixed:g} (UEO@t); GED: generalised energy "
                     "distance^2 of the samples (1 - IoU)")
    if "n/a" in "\n".join(lines):
        lines.append("n/a: class absent from both reference and prediction "
                     "(or metric not in the file)")
    return "\n".join(lines)
