"""Where a segmentation's errors lie: false positives by distance outside the reference
structure, false negatives by depth inside it, in millimetres of the image's own spacing.

Dice and HD95 say how much is wrong, not what kind of wrong. A structure drawn too thick shows
as false positives piled in the first millimetres outside the reference surface; stray blobs
show far from it; a structure drawn too thin shows as false negatives just inside. Counting
the errors by distance tells these apart (this is how LDSeg's too-thick femur on knee 3D was
measured; see benchmarks/results/accuracy.md).

    python benchmarks/error_distance.py REF_DIR NAME=PRED_DIR [NAME=PRED_DIR ...]
        [--labels 1,2] [--edges 1,2,4,8] [--output FILE]

Every case of REF_DIR must have a prediction of the same name and shape in each PRED_DIR.
Counts are summed over the cases; false positives that fall on another reference class are
counted separately as well (class confusion rather than thickening). Cases are listed and
read as `ldseg evaluate` does (its helpers: one format, hidden temporary files and subfolders
skipped, single-channel label maps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import _detect_ending, _image_files, _read_label_map
from ldseg.files import atomic_write

DEFAULT_EDGES = (1.0, 2.0, 4.0, 8.0)


def bin_names(edges: tuple[float, ...]) -> list[str]:
    bounds = (0.0,) + tuple(edges)
    names = [f"{a:g}-{b:g}" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return names + [f">{edges[-1]:g}"]


def _histogram(distances: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    # right-closed bins (a, b]: a voxel next to the surface is at one spacing, in the first bin
    index = np.searchsorted(np.asarray(edges), distances, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(int).tolist()


def _distances(ref: np.ndarray, label: int, spacing: tuple[float, ...]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference side, once per case and label however many predictions are scored: the
    structure's mask, each outside voxel's distance to it and each inside voxel's depth
    (scipy's exact Euclidean transform, in mm)."""
    inside = ref == label
    return (inside, ndimage.distance_transform_edt(~inside, sampling=spacing),
            ndimage.distance_transform_edt(inside, sampling=spacing))


def _count(pred: np.ndarray, ref: np.ndarray, label: int,
           reference: tuple[np.ndarray, np.ndarray, np.ndarray],
           edges: tuple[float, ...]) -> dict:
    if pred.shape != ref.shape:
        raise LdsegError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    inside, outside_distance, inside_depth = reference
    predicted = pred == label
    fp, fn = predicted & ~inside, inside & ~predicted
    return {"fp": _histogram(outside_distance[fp], edges),
            "fn": _histogram(inside_depth[fn], edges),
            "fp_other_class": int((fp & (ref != 0)).sum())}


def error_by_distance(pred: np.ndarray, ref: np.ndarray, label: int,
                      spacing: tuple[float, ...],
                      edges: tuple[float, ...] = DEFAULT_EDGES) -> dict:
    """False positives of `label` binned by distance (mm) to the reference structure, false
    negatives by depth (mm) inside it; `fp_other_class` counts false positives on another
    foreground class of the reference."""
    return _count(pred, ref, label, _distances(ref, label, spacing), edges)


def folders_errors(pred_dirs: dict[str, Path], ref_dir: Path, labels: list[int],
                   edges: tuple[float, ...]) -> dict[str, dict[int, dict]]:
    """Counts per prediction folder and label, summed over every case of `ref_dir`. Each
    reference is read, and its distance maps computed, once for all the folders."""
    ending = _detect_ending(ref_dir)
    refs = _image_files(ref_dir, ending)
    preds = {name: _image_files(folder, ending) for name, folder in pred_dirs.items()}
    for name, files in preds.items():
        missing = sorted(set(refs) - set(files))
        if missing:
            raise LdsegError(f"{pred_dirs[name]}: no prediction for {', '.join(missing)}")
    bins = len(edges) + 1
    totals = {name: {label: {"fp": [0] * bins, "fn": [0] * bins, "fp_other_class": 0}
                     for label in labels} for name in pred_dirs}
    for case, ref_path in refs.items():
        ref, geometry = _read_label_map(ref_path)
        reference = {label: _distances(ref, label, geometry.spacing) for label in labels}
        for name, files in preds.items():
            pred, _ = _read_label_map(files[case])
            for label in labels:
                try:
                    counts = _count(pred, ref, label, reference[label], edges)
                except LdsegError as exc:
                    raise LdsegError(f"{files[case]}: {exc}") from None
                total = totals[name][label]
                for key in ("fp", "fn"):
                    total[key] = [a + b for a, b in zip(total[key], counts[key], strict=True)]
                total["fp_other_class"] += counts["fp_other_class"]
    return totals


def table(results: dict[str, dict[int, dict]], edges: tuple[float, ...]) -> str:
    names = bin_names(edges)
    head = ("| prediction | label | errors | " + " | ".join(f"{n} mm" for n in names)
            + " | total | FP on another class |")
    lines = [head, "| " + " | ".join(["---"] * (len(names) + 5)) + " |"]
    for model, per_label in results.items():
        for label, counts in per_label.items():
            for key, what in (("fp", "FP outside"), ("fn", "FN inside")):
                other = str(counts["fp_other_class"]) if key == "fp" else ""
                cells = [str(v) for v in counts[key]] + [str(sum(counts[key])), other]
                lines.append(f"| {model} | {label} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _named_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep:
        return Path(text).name, Path(text)
    return name, Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref_dir", type=Path)
    parser.add_argument("predictions", nargs="+", help="NAME=FOLDER (or FOLDER)")
    parser.add_argument("--labels", default="1", help="comma-separated labels (default 1)")
    parser.add_argument("--edges", default=",".join(f"{e:g}" for e in DEFAULT_EDGES),
                        help="bin edges in mm, increasing (default 1,2,4,8)")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        labels = [int(v) for v in args.labels.split(",")]
        edges = tuple(float(v) for v in args.edges.split(","))
    except ValueError:
        parser.error("--labels takes integers and --edges numbers, comma-separated")
    if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)) or edges[0] <= 0:
        parser.error("--edges must be positive and increasing")
    try:
        results = folders_errors(dict(map(_named_folder, args.predictions)), args.ref_dir,
                                 labels, edges)
    except LdsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = table(results, edges)
    print(text, end="")
    if args.output:
        with atomic_write(args.output) as tmp:
            tmp.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
