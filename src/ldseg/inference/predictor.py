"""Segmenting arrays and files with a trained run, in the input's own grid and geometry.

`Segmenter` is the Python API; `predict_folder` is what `ldseg predict` runs. Cases are
processed one at a time, so a folder of any length runs in bounded memory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldseg.config import RunConfig
from ldseg.data.dataset import Case, find_image_cases, load_case
from ldseg.data.imageio import (
    SUPPORTED_FORMATS,
    Geometry,
    file_ending,
    read_image,
    spatial_dims_of_ending,
    write_image,
)
from ldseg.data.preprocessing import finite_image, prepare_for_model, restore_probabilities
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.errors import LdsegError
from ldseg.files import check_output_folder
from ldseg.inference.postprocess import (
    DEFAULT_KEEP_FRACTION,
    check_keep_fraction,
    keep_largest_component,
    parse_classes,
)
from ldseg.inference.runtime import autocast, prepare_for_inference, resolve_device
from ldseg.inference.sampling import segment_batch
from ldseg.model.baseline import BaselineUNet, build_model
from ldseg.model.networks import LDSeg
from ldseg.training.checkpoint import load_model_file, load_state_into
from ldseg.training.distributed import Dist


@dataclass
class Segmentation:
    """Result for one case, on the input's own grid."""

    labels: np.ndarray  # (*spatial) uint8
    probabilities: np.ndarray  # (K, *spatial) float32, mean over samples
    uncertainty: np.ndarray  # (*spatial) float32, entropy of the mean probabilities (nats)
    sample_labels: np.ndarray | None  # (N, *spatial) uint8 when samples > 1
    geometry: Geometry


# DDPM (eta 1) when several samples are drawn: its per-step noise makes the samples differ
# where the model is unsure, so their mean is calibrated better than DDIM's, whose samples
# differ only by their starting noise. 8 samples, the same models: ECE knee 2D 0.0176 -> 0.0130
# and 0.0178 -> 0.0139, knee 3D 0.0160 -> 0.0154, Dice within 0.003 either way
# (benchmarks/results/accuracy_knee2d.md). One sample keeps the run's sampler (DDIM: sharper).
MULTI_SAMPLE_ETA = 1.0


def default_eta(config: RunConfig, samples: int, eta: float | None = None) -> float:
    """`eta` when given (`--eta`); else the run's sampler for one sample, DDPM for several."""
    if eta is not None:
        return eta
    return MULTI_SAMPLE_ETA if samples > 1 else config.diffusion.eta


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
    """A trained LDSeg model (or the deterministic baseline) ready to segment images.

    >>> seg = Segmenter.load("runs/knee")                     # doctest: +SKIP
    >>> result = seg.segment_file("knee_0000.nii.gz", samples=8)  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, model: LDSeg | BaselineUNet,
                 device: str = "cpu", *, bf16: bool = False, compile: bool = False) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.memory_format = prepare_for_inference(self.model, compile=compile)
        self.bf16 = bf16
        self.schedule = NoiseSchedule(config.diffusion.schedule, config.diffusion.timesteps)

    @classmethod
    def load(cls, run: str | Path, checkpoint: str = "best", device: str = "cpu", *,
             bf16: bool = False, compile: bool = False) -> Segmenter:
        """device: "cpu", "cuda", "cuda:1" or "auto"; bf16/compile: see `inference.runtime`."""
        path = resolve_model_file(Path(run), checkpoint)
        config, tensors, _ = load_model_file(path)
        model = build_model(config.model)  # LDSeg or the deterministic baseline
        load_state_into(model, tensors, path)
        return cls(config, model, device, bf16=bf16, compile=compile)

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
        allow_nan: bool = False,
        keep_largest: Sequence[int] = (),
        keep_fraction: float = DEFAULT_KEEP_FRACTION,
    ) -> Segmentation:
        """image: (C, *spatial) as read from a file (any intensity range); NaN/Inf are refused,
        or replaced with a warning when `allow_nan`. `keep_largest`: classes whose label keeps
        its largest connected component and those of at least `keep_fraction` of its size
        (`inference.postprocess`); the probabilities, uncertainty and per-sample maps stay as
        the model made them."""
        cfg = self.config
        pre = cfg.preprocess
        if image.ndim != pre.data_spatial_dims + 1:
            raise LdsegError(
                f"{source}: is a {image.ndim - 1}D image (array shape {image.shape}, channels "
                f"first), the model was trained on {pre.data_spatial_dims}D images "
                f"({cfg.file_ending})"
            )
        if image.shape[0] != cfg.model.in_channels:
            raise LdsegError(
                f"{source}: has {image.shape[0]} channel(s), the model was trained on "
                f"{cfg.model.in_channels} ({', '.join(cfg.channel_names)})"
            )
        image = finite_image(image, source, allow_nan)
        geometry = geometry or Geometry.identity(pre.data_spatial_dims)
        prepared = prepare_for_model(image, None, geometry.spacing, pre,
                                     cfg.model.num_classes)
        steps = steps or cfg.diffusion.sampling_steps
        eta = default_eta(cfg, samples, eta)
        generator = torch.Generator().manual_seed(seed)  # per case: order-independent results
        runs = 1 if cfg.model.architecture == "baseline" else samples  # the baseline runs once
        chunk = max(1, batch_size // runs)
        probs, sample_labels = [], []
        for start in range(0, len(prepared.images), chunk):
            x = prepared.images[start:start + chunk].to(self.device)
            with autocast(self.device, self.bf16):
                out = segment_batch(self.model, self.schedule, x, steps=steps, eta=eta,
                                    samples=samples, generator=generator,
                                    memory_format=self.memory_format)
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
            labels=keep_largest_component(mean.argmax(0).numpy().astype(np.uint8), keep_largest,
                                          keep_fraction),
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


def check_input_dims(folder: Path, config: RunConfig) -> None:
    """A folder with no images of the model's format but images of the other dimensionality
    gets a message about dimensions rather than about file endings."""
    if not folder.is_dir():
        return
    endings = {file_ending(p) for p in folder.iterdir() if not p.name.startswith(".")}
    if config.file_ending in endings:
        return
    dims = config.preprocess.data_spatial_dims
    other = sorted(e for e in endings
                   if e in SUPPORTED_FORMATS and spatial_dims_of_ending(e) != dims)
    if other:
        raise LdsegError(f"{folder}: holds {5 - dims}D images ({', '.join(other)}), the model "
                         f"was trained on {dims}D images ({config.file_ending})")


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
    bf16: bool = False,
    compile: bool = False,
    overwrite: bool = False,
    pictures: bool = True,
    progress_bar: bool = True,
    reference_dir: Path | None = None,
    save_probabilities: bool = False,
    save_samples: bool = False,
    allow_nan: bool = False,
    keep_largest: str = "",
    keep_fraction: float = DEFAULT_KEEP_FRACTION,
    dist: Dist | None = None,
) -> list[Path]:
    """Segment every case of a folder (or one file); returns the label files written.

    Beside each label map, all in the input's geometry: with samples > 1, `uncertainty/`
    (entropy of the mean probabilities, nats) and `disagreement/` (fraction of samples that
    disagree with the final label); on request `probabilities/{case}.npz` (mean class
    probabilities, see `write_probabilities`) and `samples/{case}/sample_000{ending}`, ...
    (one label map per sample; a deterministic model's only "sample" is its output).

    Under torchrun (`dist` from `ldseg.training.distributed.session`) each rank segments every
    N-th case and returns the files it wrote; rank 0 writes the folder-level files at the end.

    `keep_largest`: "" (off), "all" or comma-separated class names or indices whose label keeps
    its largest connected component and any other of at least `keep_fraction` of its size
    (`inference.postprocess`).
    """
    from ldseg.evaluation import uncertainty as unc
    from ldseg.pictures import save_case_panel

    dist = dist or Dist()
    check_output_folder(output_dir)  # before any work
    check_keep_fraction(keep_fraction)
    if dist.enabled and device in ("cuda", "auto") and torch.cuda.is_available():
        device = f"cuda:{dist.local_rank}"  # one GPU per process
    segmenter = Segmenter.load(run, checkpoint, device, bf16=bf16, compile=compile)
    cfg = segmenter.config
    largest = parse_classes(keep_largest, cfg.class_names)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():  # a single image file
        ending = file_ending(input_dir)
        name = re.sub(r"_\d{4}$", "", input_dir.name[: -len(ending)])  # nnU-Net channel suffix
        cases = [Case(name, [input_dir], None)]
    else:
        check_input_dims(input_dir, cfg)
        cases = find_image_cases(input_dir, cfg.file_ending)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise LdsegError(f"{output_dir}: output folder exists and is not empty "
                         "(use --overwrite to replace its files)")
    dist.barrier()  # every rank has checked the output folder before any rank writes into it
    written = []
    mine = cases[dist.rank::dist.world_size]  # each case is segmented by one rank only
    for case in tqdm(mine, desc="predict", unit="case", disable=not progress_bar):
        image, _, geometry = load_case(case)
        result = segmenter.segment_array(image, geometry, steps=steps, eta=eta, samples=samples,
                                         seed=seed, source=str(case.image_files[0]),
                                         allow_nan=allow_nan, keep_largest=largest,
                                         keep_fraction=keep_fraction)
        ending = file_ending(case.image_files[0])
        out = output_dir / f"{case.name}{ending}"
        write_image(out, result.labels, geometry)
        written.append(out)
        float_name = f"{case.name}{uncertainty_ending(ending)}"
        if samples > 1:
            write_image(output_dir / unc.UNCERTAINTY_DIR / float_name, result.uncertainty,
                        geometry)
            if result.sample_labels is not None:
                write_image(output_dir / unc.DISAGREEMENT_DIR / float_name,
                            unc.sample_disagreement(result.sample_labels, result.labels),
                            geometry)
        if save_probabilities:
            unc.write_probabilities(output_dir / unc.PROBABILITIES_DIR / f"{case.name}.npz",
                                    result.probabilities, cfg.class_names, geometry)
        if save_samples:
            per_sample = (result.labels[None] if result.sample_labels is None
                          else result.sample_labels)
            # an --overwrite with fewer samples must not leave older sample files behind
            shutil.rmtree(output_dir / unc.SAMPLES_DIR / case.name, ignore_errors=True)
            for i, sample_map in enumerate(per_sample):
                write_image(output_dir / unc.SAMPLES_DIR / case.name / f"sample_{i:03d}{ending}",
                            sample_map, geometry)
        if pictures:
            reference = None
            if reference_dir is not None and (Path(reference_dir) / out.name).is_file():
                reference = read_image(Path(reference_dir) / out.name)[0][0]
            save_case_panel(output_dir / "pictures" / f"{case.name}.png", image, result.labels,
                            result.uncertainty if samples > 1 else None, reference=reference,
                            class_names=cfg.class_names, title=case.name)
    dist.barrier()  # all cases written; the folder-level files come last, from rank 0
    if not dist.is_main:
        return written
    write_prediction_info(output_dir, {
        "model": str(resolve_model_file(Path(run), checkpoint).resolve()),
        "input": str(input_dir.resolve()), "checkpoint": checkpoint,
        "steps": steps or cfg.diffusion.sampling_steps,
        "eta": default_eta(cfg, samples, eta), "samples": samples, "seed": seed,
        "keep_largest": [cfg.class_names[k] for k in largest],
        "keep_fraction": keep_fraction if largest else None,
    })
    return written


PREDICTION_JSON = "prediction.json"


def write_prediction_info(output_dir: Path, info: dict) -> None:
    """Which model made a prediction folder, from which images, with which sampler settings:
    what `ldseg report` needs to find the model and the images again."""
    from ldseg.config import save_json

    save_json(info, Path(output_dir) / PREDICTION_JSON)


def copy_run_config(run: Path, output_dir: Path) -> None:
    """Keep the config of the model that made the predictions next to them."""
    src = Path(run) / "config.json"
    if src.is_file():
        shutil.copyfile(src, Path(output_dir) / "model_config.json")


__all__ = ["Segmentation", "Segmenter", "predict_folder"]
