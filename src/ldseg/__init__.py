"""ldseg: medical image segmentation by latent diffusion (LDSeg), 2D and 3D, multi-class.

The pipeline, one folder per stage: `data` (IO, datasets, import, preprocessing, synthetic),
`model` (the four networks), `diffusion` (schedule and sampler), `training`, `inference`,
`evaluation`. The names below are the Python API.
"""

from ldseg.data.importer import import_paired_folders
from ldseg.errors import LdsegError
from ldseg.evaluation.metrics import evaluate_folders
from ldseg.evaluation.robustness import run_robustness
from ldseg.inference.predictor import Segmentation, Segmenter, predict_folder
from ldseg.training.trainer import train

__version__ = "0.1.0"
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
