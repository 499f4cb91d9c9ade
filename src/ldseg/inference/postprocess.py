"""Post-processing of label maps: keep each class's largest connected component.

nnU-Net's standard step for anatomy that is one piece per class (a femur, a tibia): spurious
islands far from the structure cost little Dice but dominate HD95. It is knowledge about the
data, not something the model learns, so it is off unless asked for (`--keep-largest`); on
glands, cells or lesions, which come in many pieces, it would delete true structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ldseg.errors import LdsegError


def parse_classes(text: str, class_names: Sequence[str]) -> tuple[int, ...]:
    """'' (none), 'all' (every foreground class), or comma-separated class names or indices."""
    if not text.strip():
        return ()
    if text.strip() == "all":
        return tuple(range(1, len(class_names)))
    chosen = []
    for item in (t.strip() for t in text.split(",")):
        if item in class_names:
            index = list(class_names).index(item)
        elif item.isdigit():
            index = int(item)
        else:
            raise LdsegError(f"--keep-largest: '{item}' is not a class of the model "
                             f"({', '.join(class_names)})")
        if not 1 <= index < len(class_names):
            raise LdsegError(f"--keep-largest: class {item} is not a foreground class "
                             f"(1..{len(class_names) - 1} of {', '.join(class_names)})")
        chosen.append(index)
    return tuple(sorted(set(chosen)))


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """labels: (*spatial) integer map. For each class in `classes`, its voxels outside the
    largest face-connected component become background (0), as in nnU-Net."""
    if not classes:
        return labels
    # scipy.ndimage rather than MONAI's KeepLargestConnectedComponent, which needs
    # scikit-image for the same labelling; scipy is already a dependency.
    out = labels.copy()
    for k in classes:
        components, count = ndimage.label(labels == k)  # face connectivity in any dimension
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out
