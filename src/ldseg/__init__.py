"""ldseg: medical image segmentation by latent diffusion (LDSeg), 2D and 3D, multi-class.

The pipeline, one folder per stage: `data` (IO, datasets, import, preprocessing, synthetic),
`model` (the four networks), `diffusion` (schedule and sampler), `training`, `inference`,
`evaluation`. The names below are the Python API.

They are imported on first use (PEP 562): `import ldseg.model.networks` then does not pull
in the metrics, SimpleITK and the importer, which cost 110 MB of memory and a second of
start-up in every process that only segments or trains.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ldseg.errors import LdsegError

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from ldseg.data.importer import import_paired_folders
    from ldseg.evaluation.metrics import evaluate_folders
    from ldseg.evaluation.robustness import run_robustness
    from ldseg.inference.predictor import Segmentation, Segmenter, predict_folder
    from ldseg.training.trainer import train

__version__ = "0.1.0"
_LAZY = {
    "import_paired_folders": "ldseg.data.importer",
    "evaluate_folders": "ldseg.evaluation.metrics",
    "run_robustness": "ldseg.evaluation.robustness",
    "Segmentation": "ldseg.inference.predictor",
    "Segmenter": "ldseg.inference.predictor",
    "predict_folder": "ldseg.inference.predictor",
    "train": "ldseg.training.trainer",
}
__all__ = [
    "LdsegError",
    "Segmentation",
    "Segmenter",
    "evaluate_folders",
    "import_paired_folders",
    "predict_folder",
    "run_robustness",
    "train",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ldseg' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
