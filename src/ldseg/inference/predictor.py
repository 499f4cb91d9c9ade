"""Segmenting arrays and files with a trained run, in the input's own grid and geometry.

`Segmenter` is the Python API; `predict_folder` is what `ldseg predict` runs. Cases are
processed one at a time, so a folder of any length runs in bounded memory.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldseg.config import RunConfig
from ldseg.data.dataset import Case, find_image_cases, load_case
from ldseg.data.imageio import Geometry, file_ending, read_image, write_image
from ldseg.data.preprocessing import prepare_case, restore_probabilities
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.errors import LdsegError
from ldseg.inference.sampling import segment_batch
from ldseg.model.networks import LDSeg
from ldseg.training.checkpoint import load_model_file, load_state_into


@dataclass
class Segmentation:
    """Result for one case, on the input's own grid."""

    labels: np.ndarray  # (*spatial) uint8
    probabilities: np.ndarray  # (K, *spatial) float32, mean over samples
    uncertainty: np.ndarray  # (*spatial) float32, entropy of the mean probabilities (nats)
    sample_labels: np.ndarray | None  # (N, *spatial) uint8 when samples > 1
    geometry: Geometry


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(0)


def resolve_model_file(run: Path, checkpoint: str = "best") -> Path:
    run = Path(run)
    if run.is_file():
        return run
    path = run / f"model_{checkpoint}.safetensors"
    if not path.is_file():
        fallback = run / "model_last.safetensors"
        if checkpoint == "best" and fallback.is_file():
            return fallback
        raise LdsegError(f"{run}: no trained model found (expected {path.name})")
    return path


class Segmenter:
    """A trained LDSeg model ready to segment images.

    >>> seg = Segmenter.load("runs/knee")                     # doctest: +SKIP
    >>> result = seg.segment_file("knee_0000.nii.gz", samples=8)  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, model: LDSeg, device: str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.schedule = NoiseSchedule(config.diffusion.schedule, config.diffusion.timesteps)

    @classmethod
    def load(cls, run: str | Path, checkpoint: str = "best", device: str = "cpu") -> Segmenter:
        path = resolve_model_file(Path(run), checkpoint)
        config, tensors, _ = load_model_file(path)
        model = LDSeg(config.model)
        load_state_into(model, tensors, path)
        return cls(config, model, device)

    @torch.inference_mode()
    def segment_array(
        self,
        image: np.ndarray,
        geometry: Geometry | None = None,
        *,
        steps: int | None = None,
        eta: float | None = None,
        samples: int = 1,
        seed: int = 0,
        batch_size: int = 16,
        source: str = "image",
    ) -> Segmentation:
        """image: (C, *spatial) as read from a file (any intensity range)."""
        cfg = self.config
        pre = cfg.preprocess
        if image.ndim != pre.data_spatial_dims + 1:
            raise LdsegError(
                f"{source}: expected a {pre.data_spatial_dims}D image with channels first, "
                f"got an array of shape {image.shape}"
            )
        if image.shape[0] != cfg.model.in_channels:
            raise LdsegError(
                f"{source}: has {image.shape[0]} channel(s), the model was trained on "
                f"{cfg.model.in_channels} ({', '.join(cfg.channel_names)})"
            )
        if not np.isfinite(image).all():
            raise LdsegError(f"{source}: image contains NaN or Inf values")
        geometry = geometry or Geometry.identity(pre.data_spatial_dims)
        prepared = prepare_case(
            image, None, geometry.spacing, pre.grid, keep_aspect=pre.keep_aspect,
            clip_percentiles=pre.clip_percentiles, num_classes=cfg.model.num_classes,
            slice_axis=None if pre.slice_axis < 0 else pre.slice_axis,
        )
        steps = steps or cfg.diffusion.sampling_steps
        eta = cfg.diffusion.eta if eta is None else eta
        generator = torch.Generator().manual_seed(seed)  # per case: order-independent results
        memory_format = torch.channels_last if pre.spatial_dims == 2 else torch.channels_last_3d
        chunk = max(1, batch_size // samples)
        probs, sample_labels = [], []
        for start in range(0, len(prepared.images), chunk):
            x = prepared.images[start:start + chunk].to(self.device)
            x = x.contiguous(memory_format=memory_format)
            out = segment_batch(self.model, self.schedule, x, steps=steps, eta=eta,
                                samples=samples, generator=generator)
            probs.append(out.mean_probs.cpu())
            if out.sample_labels is not None:
                sample_labels.append(out.sample_labels.cpu())
        mean = restore_probabilities(torch.cat(probs), prepared)
        per_sample = None
        if sample_labels:
            grid_labels = torch.cat(sample_labels)  # (N_slices, S, *grid)
            per_sample = np.stack([
                restore_probabilities(
                    torch.nn.functional.one_hot(grid_labels[:, s].long(), cfg.model.num_classes)
                    .movedim(-1, 1).float(), prepared).argmax(0).numpy().astype(np.uint8)
                for s in range(samples)
            ])
        return Segmentation(
            labels=mean.argmax(0).numpy().astype(np.uint8),
            probabilities=mean.numpy().astype(np.float32),
            uncertainty=entropy(mean).numpy().astype(np.float32),
            sample_labels=per_sample,
            geometry=geometry,
        )

    def segment_file(self, paths: str | Path | list[str | Path], **kwargs) -> Segmentation:
        """One file, or one file per channel (nnU-Net's {case}_{XXXX} files, in order)."""
        paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
        image, _, geometry = load_case(Case(paths[0].name, paths, None))
        return self.segment_array(image, geometry, source=str(paths[0]), **kwargs)


def uncertainty_ending(ending: str) -> str:
    """Float maps need a float-capable format: 2D ones become 32-bit TIFF."""
    return ".tif" if ending in (".png", ".bmp") else ending


def predict_folder(
    run: Path,
    input_dir: Path,
    output_dir: Path,
    *,
    steps: int | None = None,
    eta: float | None = None,
    samples: int = 1,
    seed: int = 0,
    checkpoint: str = "best",
    device: str = "cpu",
    overwrite: bool = False,
    pictures: bool = True,
    progress_bar: bool = True,
    reference_dir: Path | None = None,
) -> list[Path]:
    """Segment every case of a folder (or one file); returns the label files written."""
    from ldseg.pictures import save_case_panel

    segmenter = Segmenter.load(run, checkpoint, device)
    cfg = segmenter.config
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():  # a single image file
        ending = file_ending(input_dir)
        name = re.sub(r"_\d{4}$", "", input_dir.name[: -len(ending)])  # nnU-Net channel suffix
        cases = [Case(name, [input_dir], None)]
    else:
        cases = find_image_cases(input_dir, cfg.file_ending)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise LdsegError(f"{output_dir}: output folder exists and is not empty "
                         "(use --overwrite to replace its files)")
    written = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress_bar):
        image, _, geometry = load_case(case)
        result = segmenter.segment_array(image, geometry, steps=steps, eta=eta, samples=samples,
                                         seed=seed, source=str(case.image_files[0]))
        ending = file_ending(case.image_files[0])
        out = output_dir / f"{case.name}{ending}"
        write_image(out, result.labels, geometry)
        written.append(out)
        if samples > 1:
            unc_path = output_dir / "uncertainty" / f"{case.name}{uncertainty_ending(ending)}"
            write_image(unc_path, result.uncertainty, geometry)
        if pictures:
            reference = None
            if reference_dir is not None and (Path(reference_dir) / out.name).is_file():
                reference = read_image(Path(reference_dir) / out.name)[0][0]
            save_case_panel(output_dir / "pictures" / f"{case.name}.png", image, result.labels,
                            result.uncertainty if samples > 1 else None, reference=reference,
                            class_names=cfg.class_names, title=case.name)
    return written


def copy_run_config(run: Path, output_dir: Path) -> None:
    """Keep the config of the model that made the predictions next to them."""
    src = Path(run) / "config.json"
    if src.is_file():
        shutil.copyfile(src, Path(output_dir) / "model_config.json")


__all__ = ["Segmentation", "Segmenter", "predict_folder"]
