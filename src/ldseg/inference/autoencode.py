"""Reference labels through the label encoder and decoder: the ceiling of a trained LDSeg.

LDSeg's segmentation is the label decoder's reading of a latent. Even a perfect denoiser can
give no more than the decoder makes of the true label's own latent, f_ld(f_le(y)). Scoring
that reconstruction (`ldseg autoencode`, then `ldseg evaluate`) separates what the latent and
decoder lose from what the image encoder and the denoiser lose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldseg.data.dataset import find_image_cases
from ldseg.data.imageio import read_image, write_image
from ldseg.data.preprocessing import prepare_for_model, restore_probabilities
from ldseg.errors import LdsegError
from ldseg.files import check_output_folder
from ldseg.inference.predictor import Segmenter


@torch.inference_mode()
def autoencode_label(segmenter: Segmenter, label: np.ndarray, spacing: tuple[float, ...],
                     *, source: str = "label", batch_size: int = 16) -> np.ndarray:
    """label (*spatial) int -> argmax f_ld(f_le(label)) on the same grid: the model's grid
    and its resampling both ways, exactly as `predict` applies them to images."""
    cfg = segmenter.config
    if cfg.model.architecture == "baseline":
        raise LdsegError(f"{source}: the baseline U-Net has no label autoencoder; "
                         "use an LDSeg run")
    k = cfg.model.num_classes
    if label.ndim != cfg.preprocess.data_spatial_dims:
        raise LdsegError(f"{source}: is a {label.ndim}D label map, the model was trained on "
                         f"{cfg.preprocess.data_spatial_dims}D data")
    if label.min() < 0 or label.max() >= k:
        bad = [int(v) for v in np.unique(label) if not 0 <= v < k]
        raise LdsegError(f"{source}: label values {bad[:10]} are not among the model's "
                         f"classes 0..{k - 1}")
    pre = cfg.preprocess
    blank = np.zeros((1, *label.shape), np.float32)  # only the label's placement is used
    prepared = prepare_for_model(blank, label, spacing, pre, k)
    model = segmenter.model
    probs = []
    for start in range(0, len(prepared.labels), batch_size):
        y = prepared.labels[start:start + batch_size].to(segmenter.device)
        logits = model.label_decoder(model.label_encoder(y))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    restored = restore_probabilities(torch.cat(probs), prepared)
    return restored.argmax(0).numpy().astype(np.uint8)


def autoencode_folder(run: Path, labels_dir: Path, output_dir: Path, *, checkpoint: str = "best",
                      device: str = "cpu", overwrite: bool = False,
                      progress_bar: bool = True) -> list[Path]:
    """Every label map of a folder through the label autoencoder, written in its geometry."""
    check_output_folder(output_dir)
    segmenter = Segmenter.load(run, checkpoint, device)
    cases = find_image_cases(labels_dir, segmenter.config.file_ending)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise LdsegError(f"{output_dir}: output folder exists and is not empty "
                         "(use --overwrite to replace its files)")
    written = []
    for case in tqdm(cases, desc="autoencode", unit="case", disable=not progress_bar):
        path = case.image_files[0]
        array, geometry = read_image(path)
        if array.shape[0] != 1:
            raise LdsegError(f"{path}: label has {array.shape[0]} channels, expected 1")
        if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array,
                                                                         np.round(array)):
            raise LdsegError(f"{path}: label has non-integer values")
        result = autoencode_label(segmenter, array[0].astype(np.int64), geometry.spacing,
                                  source=str(path))
        out = output_dir / path.name
        write_image(out, result, geometry)
        written.append(out)
    return written

