"""`ldseg` command line: import | check | train | predict | evaluate | demo | info.

A user-fixable problem (`LdsegError`) is printed as one line and exits with status 1; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldseg.errors import LdsegError


def _ints(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 128,128: '{text}'") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train LDSeg on a dataset in nnU-Net v2 raw layout")
    p.add_argument("dataset", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
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
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--val-cases", type=_names, default=(), help="comma-separated case names")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    g.add_argument("--flip-axes", type=_ints, default=None,
                   help="spatial axes to mirror at random (default: all in 2D, none in 3D)")
    g.add_argument("--no-intensity-augment", action="store_true")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--latent-channels", type=int)
    m.add_argument("--norm", choices=("group", "batch"))
    m.add_argument("--label-input", choices=("onehot", "integer"))
    m.add_argument("--schedule", choices=("cosine", "linear", "quadratic"), default="cosine")
    m.add_argument("--denoised-rule", choices=("x0", "residual"), default="x0")
    m.add_argument("--shared-noise", action="store_true", help="reference quirk")
    m.add_argument("--steps", type=int, default=15, help="sampling steps for validation")
    p.add_argument("--no-progress", action="store_true")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment a folder of images")
    p.add_argument("-m", "--model", type=Path, required=True, help="run folder or model file")
    p.add_argument("-i", "--input", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's, 15)")
    p.add_argument("--eta", type=float, help="0 = DDIM, 1 = DDPM")
    p.add_argument("--samples", type=int, default=1, help="> 1 also writes uncertainty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--no-progress", action="store_true")


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

    p = sub.add_parser("demo", help="synthetic data -> train -> predict -> evaluate")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--minutes", type=float, default=10.0, help="training budget")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("info", help="describe a trained run")
    p.add_argument("model", type=Path)
    return parser


def _cmd_train(args) -> None:
    from ldseg.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
    from ldseg.training.plan import default_model
    from ldseg.training.trainer import train

    tc = TrainConfig(
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, budget_minutes=args.budget_minutes,
        val_every=args.val_every, val_fraction=args.val_fraction, val_cases=args.val_cases,
        flip_axes=args.flip_axes if args.flip_axes is not None else (),
        intensity_augment=not args.no_intensity_augment, seed=args.seed,
        num_threads=args.threads,
    )
    dc = DiffusionConfig(schedule=args.schedule, denoised_rule=args.denoised_rule,
                         shared_noise=args.shared_noise, sampling_steps=args.steps)
    model: ModelConfig | None = None
    overrides = {k: v for k, v in (("latent_channels", args.latent_channels), ("norm", args.norm),
                                   ("label_input", args.label_input)) if v is not None}
    if overrides:
        from ldseg.data.dataset import load_dataset_spec

        spec = load_dataset_spec(args.dataset)
        model = default_model(args.dims or spec.spatial_dims, spec.num_channels, spec.num_classes)
        for k, v in overrides.items():
            setattr(model, k, v)
        if args.latent_channels:
            model.image_latent_channels = args.latent_channels
    if args.resume:
        state = train(args.dataset, args.output, RunConfig(train=tc), resume=True,
                      progress_bar=not args.no_progress)
    else:
        state = train(args.dataset, args.output, resume=False, progress_bar=not args.no_progress,
                      dims=args.dims, grid=args.grid, max_voxels=args.max_voxels,
                      slice_axis=args.slice_axis, model=model, diffusion=dc, train=tc,
                      auto_flips=args.flip_axes is None, keep_aspect=not args.no_keep_aspect)
    best = f"{state.best_dice:.4f} (epoch {state.best_epoch})" if state.best_dice >= 0 else "n/a"
    print(f"trained {state.step} steps in {state.elapsed / 60:.1f} min; best validation "
          f"Dice {best}; run folder: {args.output}")


def _cmd_predict(args) -> None:
    from ldseg.inference.predictor import copy_run_config, predict_folder

    if args.samples < 1:
        raise LdsegError("--samples must be at least 1")
    written = predict_folder(
        args.model, args.input, args.output, steps=args.steps, eta=args.eta,
        samples=args.samples, seed=args.seed, checkpoint=args.checkpoint, device=args.device,
        overwrite=args.overwrite, pictures=not args.no_pictures,
        progress_bar=not args.no_progress,
    )
    if args.model.is_dir():
        copy_run_config(args.model, args.output)
    print(f"wrote {len(written)} segmentation(s) to {args.output}")


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
                               output_file=args.output, nsd_tolerance_mm=args.nsd_tolerance)
    print(format_table(summary))
    out = args.output or args.prediction / "summary.json"
    print(f"summary: {out} and {csv_path_for(out)}")


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


def _cmd_info(args) -> None:
    from ldseg.config import to_dict
    from ldseg.inference.predictor import Segmenter

    seg = Segmenter.load(args.model)
    counts = seg.model.parameter_counts()
    print(json.dumps({"parameters": counts, "total": sum(counts.values()),
                      "config": to_dict(seg.config)}, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
