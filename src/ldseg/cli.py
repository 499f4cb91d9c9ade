"""`ldseg` command line: import | check | train | predict | evaluate | robustness | autoencode
| demo | info | report.

A user-fixable problem (`LdsegError`) is printed as one line and exits with status 1; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ldseg.config import TIMESTEP_SAMPLINGS
from ldseg.errors import LdsegError, LdsegWarning
from ldseg.inference.postprocess import DEFAULT_KEEP_FRACTION


def _ints(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 128,128: '{text}'") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _given(**options):
    """The options the user gave (not None): the rest keep the config's or the planner's
    defaults."""
    return {k: v for k, v in options.items() if v is not None}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train LDSeg on a dataset in nnU-Net v2 raw layout")
    p.add_argument("dataset", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a non-empty --output (replaces an earlier run's files)")
    p.add_argument("--allow-nan", action="store_true",
                   help="replace NaN/Inf in images (with a warning) instead of refusing them")
    p.add_argument("--dims", type=int, choices=(2, 3), help="model dims (2 on 3D data: slices)")
    p.add_argument("--slice-axis", type=int, default=-1, help="array axis cut for --dims 2")
    p.add_argument("--grid", type=_ints, default=(), help="model grid, e.g. 256,256")
    p.add_argument("--max-voxels", type=int, default=0, help="voxel budget of the auto grid")
    p.add_argument("--no-keep-aspect", action="store_true",
                   help="stretch each axis to the grid (e.g. when one axis is time)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--iters-per-epoch", type=int, default=50)
    g.add_argument("--budget-minutes", type=float, default=0.0,
                   help="train for this wall-clock time instead of --epochs")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute activations in backward: less memory, ~1/3 more time")
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--val-cases", type=_names, default=(), help="comma-separated case names")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    g.add_argument("--flip-axes", type=_ints, default=None,
                   help="spatial axes to mirror at random (default: all in 2D, none in 3D)")
    g.add_argument("--no-intensity-augment", action="store_true")
    g.add_argument("--dice-weight", type=float, metavar="GAMMA",
                   help="weight of (1 - Dice) against cross-entropy in the loss (default 2, "
                        "the method page's gamma)")
    g.add_argument("--noise-weight", type=float, metavar="LAMBDA",
                   help="weight of the noise-prediction MSE in LDSeg's loss (default 1, the "
                        "method page's lambda)")
    g.add_argument("--denoiser-seg-grad", type=float, metavar="W",
                   help="share of the segmentation loss's gradient that reaches the denoiser "
                        "through its noise estimate (0..1; default 0.1)")
    g.add_argument("--noise-augment", type=float, metavar="STD",
                   help="Gaussian image noise in training, as a noisy scan looks after "
                        "z-scoring: per sample a std drawn from [0, STD] in z-score units, then "
                        "rescaled to unit variance (0 = off; default 2.0 for a 2D model, 1.0 "
                        "for 3D)")
    g.add_argument("--noise-augment-prob", type=float, metavar="P",
                   help="share of training samples that get that noise, the others stay "
                        "clean (default 1.0)")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--model", choices=("ldseg", "baseline"), default="ldseg",
                   help="baseline: a deterministic MONAI U-Net (Dice + CE loss) "
                        "trained through the same pipeline, for comparisons")
    m.add_argument("--size", choices=("lean", "reference"), default="lean",
                   help="LDSeg widths: lean (default; narrow full-resolution stages, 2-3x "
                        "faster steps) or reference (the method page's)")
    m.add_argument("--latent-channels", type=int,
                   help="label-latent channels (the image latent gets as many unless "
                        "--image-latent-channels is given)")
    m.add_argument("--image-latent-channels", type=int, metavar="N",
                   help="channels of the image latent the denoiser is conditioned on")
    m.add_argument("--downsamplings", type=int, metavar="N",
                   help="latent grid = 1/2^N of the model grid per axis (default: planned, at "
                        "most 4 in 2D and 3 in 3D, fewer for small grids); for the baseline, "
                        "its U-Net's depth (default 4 in 2D, 3 in 3D)")
    m.add_argument("--norm", choices=("group", "batch"))
    m.add_argument("--label-input", choices=("onehot", "integer"))
    m.add_argument("--schedule", choices=("cosine", "linear", "quadratic"), default="cosine")
    m.add_argument("--denoised-rule", choices=("x0", "residual"), default="x0")
    m.add_argument("--shared-noise", action="store_true", help="reference quirk")
    m.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLINGS,
                   help="training timesteps: late (the default, density proportional to t) "
                        "or uniform")
    m.add_argument("--steps", type=int,
                   help="sampling steps kept in the run for predict and validation "
                        "(default: 15 for a 2D model, 2 for 3D)")
    p.add_argument("--no-progress", action="store_true")


def _add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="Dice and HD95 against Gaussian image noise, per model")
    p.add_argument("-m", "--model", type=Path, action="append", required=True, dest="models",
                   metavar="RUN", help="run folder; repeat for more models (same noise)")
    p.add_argument("-d", "--dataset", type=Path, required=True, help="nnU-Net raw dataset")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--sigmas", default="0:0.2:0.02",
                   help="noise levels on the [0,1]-scaled image: start:stop:step or a,b,c")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--steps", type=int, help="sampling steps (default: each run's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=_names, default=(),
                   help="comma-separated cases (default: imagesTs/labelsTs)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep-largest", default="", metavar="CLASSES",
                   help="post-process every model's labels as ldseg predict --keep-largest")
    p.add_argument("--keep-fraction", type=float, default=DEFAULT_KEEP_FRACTION, metavar="F",
                   help="as ldseg predict --keep-fraction")
    p.add_argument("--no-progress", action="store_true")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment a folder of images")
    p.add_argument("-m", "--model", type=Path, required=True, help="run folder or model file")
    p.add_argument("-i", "--input", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--steps", type=int,
                   help="sampling steps (default: the run's: 15 for a 2D model, 2 for 3D)")
    p.add_argument("--eta", type=float,
                   help="0 = DDIM, 1 = DDPM (default: the run's, 0, for 1 sample; 1 for several)")
    p.add_argument("--samples", type=int, default=1,
                   help="> 1 also writes uncertainty/ (entropy) and disagreement/")
    p.add_argument("--save-probabilities", action="store_true",
                   help="write mean class probabilities to probabilities/{case}.npz")
    p.add_argument("--save-samples", action="store_true",
                   help="write each sample's label map to samples/{case}/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or auto (the GPU when there is one)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 mixed precision (GPUs, and CPUs with bf16 units; labels "
                        "may differ from fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the full-resolution networks (pays off on long folders)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-nan", action="store_true",
                   help="replace NaN/Inf in images (with a warning) instead of refusing them")
    p.add_argument("--keep-largest", default="", metavar="CLASSES",
                   help="'all' or comma-separated classes whose label keeps only its largest "
                        "connected component (anatomy in one piece; not for glands or lesions)")
    p.add_argument("--keep-fraction", type=float, default=DEFAULT_KEEP_FRACTION, metavar="F",
                   help="with --keep-largest, also keep components of at least F times the "
                        "largest's size (a structure that came out in pieces; 1 = the largest "
                        f"alone, as nnU-Net; default {DEFAULT_KEEP_FRACTION})")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--report", action="store_true", help="also write OUTPUT/report.html")
    p.add_argument("--no-progress", action="store_true")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of predictions or a run")
    p.add_argument("folder", type=Path, help="prediction folder (ldseg predict) or run folder")
    p.add_argument("-o", "--output", type=Path, help="HTML file (default: FOLDER/report.html)")
    p.add_argument("-r", "--reference", type=Path, help="reference label maps: metrics, errors")
    p.add_argument("-m", "--model", type=Path,
                   help="run folder or model file (default: the one in prediction.json)")
    p.add_argument("-d", "--dataset-json", type=Path,
                   help="dataset.json: class and channel names; images from imagesTs/imagesTr")
    p.add_argument("-i", "--images", type=Path,
                   help="the segmented images (default: the input in prediction.json)")
    p.add_argument("--summary", type=Path, help="summary.json (default: FOLDER/summary.json)")
    p.add_argument("--robustness", type=Path,
                   help="robustness.csv/.json or the output folder of ldseg robustness")
    p.add_argument("--png", type=Path, metavar="DIR", help="also write the pictures as PNG files")
    p.add_argument("--max-cases", type=int, default=20, help="cases shown, worst first")
    p.add_argument("--max-slices", type=int, default=32, help="slider slices per 3D plane")
    p.add_argument("--no-diffusion", action="store_true",
                   help="leave out the reverse diffusion (it runs the model once)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldseg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="paired image/label folders -> nnU-Net v2 raw dataset")
    p.add_argument("images", type=Path)
    p.add_argument("labels", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--label-suffix", default="_label")
    p.add_argument("--class-names", type=_names, help="e.g. background,femur,tibia")
    p.add_argument("--channel-names", type=_names)
    p.add_argument("--instances-to-foreground", action="store_true",
                   help="every label > 0 becomes class 1 (instance maps)")
    p.add_argument("--test-cases", type=_names, default=(),
                   help="comma-separated cases held out into imagesTs/labelsTs")
    p.add_argument("--name")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("check", help="report every problem of a dataset")
    p.add_argument("dataset", type=Path)

    _add_train(sub)
    _add_predict(sub)

    p = sub.add_parser("evaluate", help="Dice, IoU, HD95, ASSD, NSD, volume difference")
    p.add_argument("prediction", type=Path)
    p.add_argument("reference", type=Path)
    p.add_argument("-d", "--dataset-json", type=Path)
    p.add_argument("-o", "--output", type=Path, help="summary.json path")
    p.add_argument("--nsd-tolerance", type=float, default=1.0,
                   help="surface Dice tolerance in mm")
    p.add_argument("--ece-bins", type=int, default=15,
                   help="calibration bins (with probabilities/ from predict)")
    p.add_argument("--ueo-threshold", type=float, default=0.5,
                   help="fixed threshold of entropy / log K for the uncertainty-error overlap")
    p.add_argument("--report", action="store_true",
                   help="also write report.html next to summary.json")
    _add_robustness(sub)

    p = sub.add_parser("autoencode", help="reference labels through the label encoder and "
                       "decoder: the Dice an LDSeg run can at most reach (score with evaluate)")
    p.add_argument("-m", "--model", type=Path, required=True, help="LDSeg run folder or model")
    p.add_argument("-i", "--input", type=Path, required=True, help="folder of label maps")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("demo", help="synthetic data -> train -> predict -> evaluate")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--minutes", type=float, default=10.0, help="training budget")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("info", help="describe this machine's runtime and a trained run")
    p.add_argument("model", type=Path, nargs="?", help="run folder or model file")
    _add_report(sub)
    return parser


def _cmd_train(args) -> None:
    from ldseg.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
    from ldseg.training.distributed import rank_from_env
    from ldseg.training.plan import default_model
    from ldseg.training.trainer import train

    tc = TrainConfig(
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, budget_minutes=args.budget_minutes,
        val_every=args.val_every, val_fraction=args.val_fraction, val_cases=args.val_cases,
        flip_axes=args.flip_axes if args.flip_axes is not None else (),
        intensity_augment=not args.no_intensity_augment, seed=args.seed,
        **_given(gamma_dice=args.dice_weight, lambda_noise=args.noise_weight,
                 denoiser_segmentation_grad=args.denoiser_seg_grad,
                 noise_augment_std=args.noise_augment,
                 noise_augment_prob=args.noise_augment_prob),
        num_threads=args.threads, gradient_checkpointing=args.grad_checkpoint,
    )
    dc = DiffusionConfig(schedule=args.schedule, denoised_rule=args.denoised_rule,
                         shared_noise=args.shared_noise,
                         **_given(timestep_sampling=args.timestep_sampling,
                                  sampling_steps=args.steps))
    model: ModelConfig | None = None
    overrides = {k: v for k, v in (("latent_channels", args.latent_channels), ("norm", args.norm),
                                   ("label_input", args.label_input)) if v is not None}
    if overrides or args.model != "ldseg" or args.size != "lean" or args.image_latent_channels:
        from ldseg.data.dataset import load_dataset_spec

        spec = load_dataset_spec(args.dataset)
        model = default_model(args.dims or spec.spatial_dims, spec.num_channels, spec.num_classes,
                              architecture=args.model, size=args.size)
        for k, v in overrides.items():
            setattr(model, k, v)
        if args.latent_channels:
            model.image_latent_channels = args.latent_channels
        if args.image_latent_channels:
            model.image_latent_channels = args.image_latent_channels
    if args.resume:
        state = train(args.dataset, args.output, RunConfig(train=tc), resume=True,
                      progress_bar=not args.no_progress, allow_nan=args.allow_nan)
    else:
        state = train(args.dataset, args.output, resume=False, progress_bar=not args.no_progress,
                      overwrite=args.overwrite, allow_nan=args.allow_nan, dims=args.dims,
                      grid=args.grid, max_voxels=args.max_voxels,
                      slice_axis=args.slice_axis, model=model, diffusion=dc, train=tc,
                      auto_flips=args.flip_axes is None,
                      auto_noise=args.noise_augment is None, auto_steps=args.steps is None,
                      auto_seg_grad=args.denoiser_seg_grad is None,
                      keep_aspect=not args.no_keep_aspect,
                      downsamplings="auto" if args.downsamplings is None else args.downsamplings)
    best = f"{state.best_dice:.4f} (epoch {state.best_epoch})" if state.best_dice >= 0 else "n/a"
    if rank_from_env() == 0:  # under torchrun every rank holds the same result
        print(f"trained {state.step} steps in {state.elapsed / 60:.1f} min; best validation "
              f"Dice {best}; run folder: {args.output}")
        _print_malloc()


def _print_malloc() -> None:
    """The malloc this command ran on (src/ldseg/allocator.py chose it)."""
    from ldseg.allocator import describe

    print(f"malloc: {describe()}")


def _cmd_predict(args) -> None:
    from ldseg.inference.predictor import copy_run_config, predict_folder
    from ldseg.training.distributed import session

    if args.samples < 1:
        raise LdsegError("--samples must be at least 1")
    with session(use_cuda=False) as dist:  # under torchrun: each rank takes every N-th case
        written = predict_folder(
            args.model, args.input, args.output, steps=args.steps, eta=args.eta,
            samples=args.samples, seed=args.seed, checkpoint=args.checkpoint, device=args.device,
            bf16=args.bf16, compile=args.compile, overwrite=args.overwrite,
            pictures=not args.no_pictures,
            progress_bar=not args.no_progress and dist.is_main,
            save_probabilities=args.save_probabilities, save_samples=args.save_samples,
            allow_nan=args.allow_nan, keep_largest=args.keep_largest,
            keep_fraction=args.keep_fraction, dist=dist,
        )
    who = f"rank {dist.rank}: " if dist.enabled else ""  # each rank wrote its share
    print(f"{who}wrote {len(written)} segmentation(s) to {args.output}")
    if not dist.is_main:
        return
    _print_malloc()
    if args.model.is_dir():
        copy_run_config(args.model, args.output)
    if args.report:
        _write_report(args.output)


def _cmd_evaluate(args) -> None:
    from ldseg.evaluation.metrics import (
        csv_path_for,
        evaluate_folders,
        format_table,
        load_dataset_labels,
    )

    labels, names = (None, None)
    if args.dataset_json:
        labels, names = load_dataset_labels(args.dataset_json)
    summary = evaluate_folders(args.prediction, args.reference, labels=labels, class_names=names,
                               output_file=args.output, nsd_tolerance_mm=args.nsd_tolerance,
                               ece_bins=args.ece_bins, ueo_threshold=args.ueo_threshold)
    print(format_table(summary))
    out = args.output or args.prediction / "summary.json"
    print(f"summary: {out} and {csv_path_for(out)}")
    if args.report:
        _write_report(args.prediction, Path(out).parent / "report.html", summary=out,
                      reference=args.reference, dataset_json=args.dataset_json)


def _cmd_robustness(args) -> None:
    from ldseg.evaluation.robustness import format_robustness, run_robustness

    result = run_robustness(args.models, args.dataset, args.output, sigmas=args.sigmas,
                            samples=args.samples, steps=args.steps, seed=args.seed,
                            cases=args.cases, checkpoint=args.checkpoint, device=args.device,
                            progress_bar=not args.no_progress, keep_largest=args.keep_largest,
                            keep_fraction=args.keep_fraction)
    print(result["note"])
    print(format_robustness(result))
    print(f"wrote robustness.json, robustness.csv and robustness.png to {args.output}")
    _print_malloc()


def _cmd_import(args) -> None:
    from ldseg.data.importer import import_paired_folders

    spec = import_paired_folders(
        args.images, args.labels, args.output, label_suffix=args.label_suffix,
        class_names=list(args.class_names) if args.class_names else None,
        instances_to_foreground=args.instances_to_foreground,
        channel_names=list(args.channel_names) if args.channel_names else None,
        name=args.name, overwrite=args.overwrite, test_cases=list(args.test_cases),
    )
    held = f" (+{len(args.test_cases)} held out in imagesTs)" if args.test_cases else ""
    print(f"imported {spec.num_training} case(s){held} into {args.output}: "
          f"{spec.num_channels} channel(s) {list(spec.channel_names)}, "
          f"classes {list(spec.class_names)}, files '{spec.file_ending}'")


def _cmd_check(args) -> int:
    from ldseg.data.dataset import check_dataset, load_dataset_spec

    spec = load_dataset_spec(args.dataset)
    problems = check_dataset(spec)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.dataset}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: OK ({spec.num_training} training cases, {spec.num_channels} "
          f"channel(s), {spec.num_classes} classes)")
    return 0


def _runtime() -> dict:
    import torch

    from ldseg import __version__, allocator
    from ldseg.inference.runtime import cpu_has_bf16

    return {"ldseg": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "cpu_bf16": cpu_has_bf16(),
            "malloc": allocator.describe()}


def _cmd_info(args) -> None:
    from ldseg.config import to_dict
    from ldseg.inference.predictor import Segmenter

    info: dict = {"runtime": _runtime()}
    if args.model is not None:
        seg = Segmenter.load(args.model)
        counts = seg.model.parameter_counts()
        info.update({"architecture": seg.config.model.architecture, "parameters": counts,
                     "total": sum(counts.values()), "config": to_dict(seg.config)})
    print(json.dumps(info, indent=2))


def _write_report(folder: Path, output: Path | None = None, **options) -> None:
    from ldseg.reporting import build_report

    print(f"report: {build_report(folder, output, **options)}")


def _cmd_report(args) -> None:
    _write_report(args.folder, args.output, reference=args.reference, model=args.model,
                  dataset_json=args.dataset_json, images=args.images, summary=args.summary,
                  robustness=args.robustness,
                  png_dir=args.png, max_cases=args.max_cases, max_slices=args.max_slices,
                  diffusion=not args.no_diffusion, checkpoint=args.checkpoint)
    if args.png:
        print(f"pictures: {args.png}")


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, *args, **kwargs) -> str:
    """ldseg's own warnings as one line, like its errors; others as Python prints them."""
    if issubclass(category, LdsegWarning):
        return f"ldseg: warning: {message}\n"
    return _python_format_warning(message, category, *args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command itself, not a call from Python: pick the malloc first
        from ldseg.allocator import reexec_with_fast_malloc

        try:
            runs = getattr(args, "models", None) or [getattr(args, "model", None)]
            reexec_with_fast_malloc(args.command, [r for r in runs if isinstance(r, Path)])
        except LdsegError as exc:
            print(f"ldseg: error: {exc}", file=sys.stderr)
            return 1
    warnings.formatwarning = _format_warning
    try:
        if args.command == "train":
            _cmd_train(args)
        elif args.command == "predict":
            _cmd_predict(args)
        elif args.command == "evaluate":
            _cmd_evaluate(args)
        elif args.command == "import":
            _cmd_import(args)
        elif args.command == "check":
            return _cmd_check(args)
        elif args.command == "demo":
            from ldseg.demo import run_demo

            run_demo(args.output, minutes=args.minutes, seed=args.seed, threads=args.threads)
        elif args.command == "info":
            _cmd_info(args)
        elif args.command == "robustness":
            _cmd_robustness(args)
        elif args.command == "autoencode":
            from ldseg.inference.autoencode import autoencode_folder

            written = autoencode_folder(args.model, args.input, args.output,
                                        checkpoint=args.checkpoint, device=args.device,
                                        overwrite=args.overwrite,
                                        progress_bar=not args.no_progress)
            print(f"wrote {len(written)} reconstructed label map(s) to {args.output}")
        elif args.command == "report":
            _cmd_report(args)
    except LdsegError as exc:
        if args.debug:
            raise
        print(f"ldseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ldseg: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["main", "build_parser"]

if __name__ == "__main__":
    sys.exit(main())
