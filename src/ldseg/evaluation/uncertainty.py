"""Checking the uncertainty of a sampled segmentation: calibration, where it flags the errors,
and how the spread of the samples matches the reference.

All three are computed on the input's own grid, over every voxel of a case:

- `expected_calibration_error` (ECE), one class against the rest: voxels are put into
  `bins` equal-width bins of the predicted probability of the class over [0, 1] (bin b holds
  b/B <= p < (b+1)/B, the last one also p = 1); in each bin the mean probability is compared
  with the fraction of voxels that are that class in the reference, and the gaps are averaged
  weighted by the bins' voxel counts: `ECE = sum_b (n_b / n) |acc_b - conf_b|`. 0 is perfect
  calibration. The many confidently-right background voxels count too, so values are small;
  compare models only on the same cases.
- `uncertainty_error_overlap` (UEO, Jungo & Reyes 2019): Dice between the thresholded
  uncertainty map (`u >= t`) and the error mask (`prediction != reference`), at the best
  threshold (every distinct value of the map is tried) and at a fixed one (default 0.5).
  Uncertainty is first divided by its largest possible value, `max_value`: log(K) for the
  entropy in nats that `ldseg predict` writes (K classes), 1 for `sample_disagreement`, so
  that thresholds mean the same for any number of classes. A case without any error has
  nothing to find: both Dice are NaN (left out of means, like nnU-Net's empty-vs-empty).
- `generalized_energy_distance` (GED, Kohl et al. 2018), returned squared as the
  probabilistic-segmentation papers report it: `GED^2 = 2 E[d(s, y)] - E[d(s, s')]` for one
  reference y and samples s, s' (the reference-to-reference term of the general definition
  is 0). d is the mean over the foreground classes 1..K-1 of `1 - IoU` of that class (as in
  PHiSeg, Baumgartner et al. 2019), a class absent from both maps counting 0, so GED^2 is the
  mean of the per-class GED^2. `E[d(s, s')]` averages the N (N - 1) pairs of distinct samples
  (unbiased; including the zero diagonal, as some code does, shrinks it by (N - 1) / N); a
  single sample has no spread and the term is 0. 0 means every sample equals the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldseg.data.imageio import Geometry, read_image
from ldseg.errors import LdsegError
from ldseg.files import atomic_write

DEFAULT_ECE_BINS = 15
DEFAULT_UEO_THRESHOLD = 0.5
# Where `ldseg predict` puts the uncertainty outputs inside its output folder; `ldseg evaluate`
# looks for them there.
UNCERTAINTY_DIR = "uncertainty"  # entropy of the mean probabilities, nats
DISAGREEMENT_DIR = "disagreement"  # `sample_disagreement`
PROBABILITIES_DIR = "probabilities"  # {case}.npz, see `write_probabilities`
SAMPLES_DIR = "samples"  # {case}/sample_000{ending}, ...
MODEL_CONFIG = "model_config.json"  # the run's config.json, copied there by `ldseg predict`
# Per-case scores of `score_case_uncertainty` (ECE is per class, beside Dice).
CASE_KEYS = ("UEO", "UEO_threshold", "UEO_fixed", "GED")


def _same_shape(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    if a.shape != b.shape:
        raise LdsegError(f"{what_a} shape {a.shape} differs from {what_b} shape {b.shape}")


def expected_calibration_error(
    probabilities: np.ndarray, reference: np.ndarray, class_index: int, bins: int = DEFAULT_ECE_BINS
) -> float:
    """One-vs-rest ECE of class `class_index` (see the module docstring).

    probabilities: (K, *spatial) mean class probabilities; reference: (*spatial) label map.
    """
    probabilities = np.asarray(probabilities)
    reference = np.asarray(reference)
    if not 0 <= class_index < probabilities.shape[0]:
        raise LdsegError(f"class {class_index} not among the {probabilities.shape[0]} "
                         "classes of the probabilities")
    if bins < 1:
        raise LdsegError(f"invalid number of ECE bins {bins}: at least 1")
    _same_shape(probabilities[class_index], reference, "probability map", "reference")
    p = np.clip(probabilities[class_index].astype(np.float64).ravel(), 0.0, 1.0)
    hit = (reference.ravel() == class_index).astype(np.float64)
    if p.size == 0:
        return math.nan
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, hit, bins) - np.bincount(index, p, bins))  # n_b |acc - conf|
    return float(gap.sum() / count.sum())


def sample_disagreement(sample_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per voxel, the fraction of samples whose label differs from the final label.

    0 where every sample agrees with the output, up to 1 (the final label, the argmax of the
    mean probabilities, need not be any sample's vote). It reads as "how often would a
    single sample have said something else here", which a user can check at a glance.
    """
    sample_labels = np.asarray(sample_labels)
    _same_shape(sample_labels[0], np.asarray(labels), "sample label map", "label map")
    return (sample_labels != labels[None]).mean(0, dtype=np.float64).astype(np.float32)


def _dice(intersection: np.ndarray, size_a: np.ndarray, size_b: float) -> np.ndarray:
    total = size_a + size_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / total, math.nan)


def uncertainty_error_overlap(
    uncertainty: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    threshold: float | None = None,
    *,
    max_value: float = 1.0,
) -> dict:
    """UEO at the best and at a fixed threshold (see the module docstring).

    Returns {"best", "best_threshold", "fixed", "fixed_threshold"}; thresholds are on the
    normalised scale `uncertainty / max_value` (pass `math.log(K)` for entropy in nats) and
    the map is `normalised >= threshold`. Among equal best Dice the highest threshold wins.
    """
    fixed_threshold = DEFAULT_UEO_THRESHOLD if threshold is None else float(threshold)
    if not max_value > 0:
        raise LdsegError(f"invalid maximum uncertainty {max_value}: must be > 0")
    u = np.asarray(uncertainty, dtype=np.float64) / max_value
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    _same_shape(u, reference, "uncertainty map", "reference")
    _same_shape(prediction, reference, "prediction", "reference")
    if not np.isfinite(u).all() or u.min(initial=0) < -1e-6 or u.max(initial=0) > 1 + 1e-4:
        raise LdsegError(f"uncertainty outside [0, 1] after dividing by {max_value:g} (range "
                         f"{u.min(initial=0):g}..{u.max(initial=0):g}): pass max_value = log(K) "
                         "for entropy")
    error = (prediction != reference).ravel()
    n_error = int(error.sum())
    result = {"best": math.nan, "best_threshold": math.nan, "fixed": math.nan,
              "fixed_threshold": fixed_threshold}
    if n_error == 0:
        return result
    flat = u.ravel()
    flagged = flat >= fixed_threshold
    result["fixed"] = float(_dice(np.array(float((flagged & error).sum())),
                                  np.array(float(flagged.sum())), n_error))
    # Every distinct value t: the voxels >= t are a prefix of the descending sort.
    order = np.argsort(-flat, kind="stable")
    values = flat[order]
    hits = np.cumsum(error[order], dtype=np.int64)
    last = np.flatnonzero(np.r_[values[1:] != values[:-1], True])  # end of each run of ties
    dice = _dice(hits[last].astype(np.float64), (last + 1).astype(np.float64), n_error)
    best = int(np.argmax(dice))  # first maximum = highest threshold
    result["best"] = float(dice[best])
    result["best_threshold"] = float(values[last[best]])
    return result


def _check_label_map(array: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise LdsegError(f"{what} is not a label map (non-integer values)")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise LdsegError(f"{what} has values outside 0..{num_classes - 1}")
    return array


def _distances(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean over foreground classes of 1 - IoU; a class absent from both counts 0."""
    k = num_classes
    pair = a.astype(np.int64).ravel() * k + b.astype(np.int64).ravel()
    confusion = np.bincount(pair, minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)[1:].astype(np.float64)
    union = confusion.sum(1)[1:] + confusion.sum(0)[1:] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(union > 0, 1.0 - inter / union, 0.0)
    return float(d.mean())


def generalized_energy_distance(
    samples: np.ndarray, reference: np.ndarray, num_classes: int
) -> float:
    """GED^2 between N sampled label maps (N, *spatial) and one reference (*spatial), with
    d = mean over foreground classes of 1 - IoU (see the module docstring)."""
    if num_classes < 2:
        raise LdsegError(f"GED needs at least one foreground class (num_classes={num_classes})")
    samples = np.asarray(samples)
    reference = np.asarray(reference)
    if samples.ndim != reference.ndim + 1 or samples.shape[0] < 1:
        raise LdsegError(f"samples must be (N, *spatial) for a reference of shape "
                         f"{reference.shape}, got {samples.shape}")
    _same_shape(samples[0], reference, "sample label map", "reference")
    samples = _check_label_map(samples, num_classes, "samples")
    reference = _check_label_map(reference, num_classes, "reference")
    n = samples.shape[0]
    to_reference = np.mean([_distances(s, reference, num_classes) for s in samples])
    pairs = [_distances(samples[i], samples[j], num_classes)
             for i in range(n) for j in range(i + 1, n)]  # d is symmetric
    between = float(np.mean(pairs)) if pairs else 0.0
    return float(2.0 * to_reference - between)


def write_probabilities(
    path: str | Path, probabilities: np.ndarray, class_names: Sequence[str], geometry: Geometry
) -> Path:
    """Save mean class probabilities (K, *spatial) as a compressed `.npz`, atomically.

    Keys: `probabilities` (float16: 3 decimal digits are plenty for calibration and it halves
    the size), `class_names`, and the input's `spacing`, `origin`, `direction` (ITK order as
    in `Geometry`), so the map can be put back on the image grid without the image.
    """
    path = Path(path)
    with atomic_write(path, suffix=".npz") as tmp, tmp.open("wb") as f:
        np.savez_compressed(
            f, probabilities=np.asarray(probabilities, dtype=np.float16),
            class_names=np.array(list(class_names), dtype=str),
            spacing=np.array(geometry.spacing), origin=np.array(geometry.origin),
            direction=np.array(geometry.direction),
        )
    return path


def read_probabilities(path: str | Path) -> tuple[np.ndarray, list[str], Geometry]:
    """Read what `write_probabilities` wrote: float32 probabilities, class names, geometry."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            probabilities = data["probabilities"].astype(np.float32)
            names = [str(n) for n in data["class_names"]]
            geometry = Geometry(*(tuple(float(v) for v in data[k])
                                  for k in ("spacing", "origin", "direction")))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise LdsegError(f"{path}: cannot read probabilities ({exc})") from None
    if probabilities.ndim != geometry.spatial_dims + 1:
        raise LdsegError(f"{path}: probabilities of shape {probabilities.shape} do not match a "
                         f"{geometry.spatial_dims}D geometry")
    return probabilities, names, geometry


def model_num_classes(pred_dir: str | Path) -> int | None:
    """K of the model that made a prediction folder, from its model_config.json if any."""
    try:
        config = json.loads((Path(pred_dir) / MODEL_CONFIG).read_text(encoding="utf-8"))
        k = config["model"]["num_classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return k if isinstance(k, int) and k >= 2 else None


def _read_map(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    array, _ = read_image(path)
    if array.shape[0] != 1 or array.shape[1:] != shape:
        raise LdsegError(f"{path}: shape {array.shape[1:]} differs from the reference's {shape}")
    return array[0]


def _float_map(folder: Path, case: str, ending: str) -> Path | None:
    """The float map `ldseg predict` wrote for `case` in `folder`, if any."""
    from ldseg.inference.predictor import uncertainty_ending  # 2D float maps are .tif

    path = folder / f"{case}{uncertainty_ending(ending)}"
    return path if path.is_file() else None


def score_case_uncertainty(
    pred_dir: str | Path,
    case: str,
    ending: str,
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    num_classes: int | None = None,
    ece_bins: int = DEFAULT_ECE_BINS,
    ueo_threshold: float | None = None,
) -> tuple[dict[int, float], dict[str, float]]:
    """Score whatever uncertainty outputs `ldseg predict` left for `case` in `pred_dir`.

    Returns (ECE per foreground class, {UEO, UEO_threshold, UEO_fixed, GED}), each empty or
    partial when the files behind it are absent: ECE needs `probabilities/{case}.npz`; UEO
    the entropy map in `uncertainty/` (or the probabilities, whose entropy it then is); GED
    the label maps in `samples/{case}/`. K (for log K and GED's classes) comes from the
    probabilities, else `num_classes` (the model's), else the largest label seen + 1, and
    then the entropy is divided by at least its own maximum so that it stays within [0, 1].
    """
    pred_dir = Path(pred_dir)
    probs = None
    npz = pred_dir / PROBABILITIES_DIR / f"{case}.npz"
    if npz.is_file():
        probs, _, _ = read_probabilities(npz)
        if probs.shape[1:] != reference.shape:
            raise LdsegError(f"{npz}: shape {probs.shape[1:]} differs from the reference's "
                             f"{reference.shape}")
    sample_files = sorted((pred_dir / SAMPLES_DIR / case).glob(f"sample_*{ending}"))
    samples = (np.stack([_read_map(f, reference.shape) for f in sample_files])
               if sample_files else None)
    seen = [int(a.max(initial=0)) for a in (prediction, reference, samples) if a is not None]
    known = probs.shape[0] if probs is not None else num_classes
    k = known or max(2, max(seen) + 1)

    ece = {} if probs is None else {
        c: expected_calibration_error(probs, reference, c, ece_bins) for c in range(1, k)
    }
    scores: dict[str, float] = {}
    unc_file = _float_map(pred_dir / UNCERTAINTY_DIR, case, ending)
    if unc_file is not None:
        u = _read_map(unc_file, reference.shape).astype(np.float64)
    elif probs is not None:
        p = probs.astype(np.float64)
        u = -(p * np.log(np.clip(p, 1e-12, None))).sum(0)
    else:
        u = None
    if u is not None:
        limit = math.log(k) if known else max(math.log(k), float(u.max(initial=0)))
        r = uncertainty_error_overlap(np.minimum(u, limit) if known else u, prediction,
                                      reference, ueo_threshold, max_value=limit)
        scores.update(UEO=r["best"], UEO_threshold=r["best_threshold"], UEO_fixed=r["fixed"])
    if samples is not None:
        scores["GED"] = generalized_energy_distance(samples, reference, max(k, max(seen) + 1))
    return ece, scores


__all__ = [
    "expected_calibration_error",
    "generalized_energy_distance",
    "read_probabilities",
    "sample_disagreement",
    "score_case_uncertainty",
    "uncertainty_error_overlap",
    "write_probabilities",
]
