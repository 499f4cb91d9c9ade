"""Soak test of crash-safe training: SIGTERM at random moments, resume, same weights in the end.

A synthetic 2D dataset is trained twice with the same seed and step count: once without
interruption, once stopped by SIGTERM at `--kills` random moments (during steps, checkpoint
writes or validation alike) and continued with `ldseg train --resume` each time. The two runs
must end with the same weights hash (model, EMA, optimizer, RNG and data order in
train_state, the EMA in model_last) and the same loss at every step.

    python benchmarks/soak.py                     # ~10 minutes on a 2-core CPU
    python benchmarks/soak.py --minutes 1.5       # a quick check of the script itself

Prints a summary and writes it to WORK/soak.json; exit status 1 if the runs differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ldseg.data.synthetic import write_synthetic_dataset
from ldseg.training.checkpoint import content_hash, load_tensors
from ldseg.training.trainer import LOG_CSV, LOSSES_CSV, MODEL_LAST, TRAIN_STATE

ITERS = 10  # steps per epoch: a checkpoint and a validation every 10 steps


def ldseg(*args: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "ldseg.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, what: str, signalled: bool = False) -> str:
    out, err = proc.communicate()
    # A signal after the training loop has returned (all saved) meets the default handler.
    if proc.returncode != 0 and not (signalled and proc.returncode == -signal.SIGTERM):
        sys.exit(f"{what} failed with exit status {proc.returncode}:\n{err[-2000:]}")
    return out


def weights_hash(run: Path) -> str:
    """One hash over the whole training state and the EMA model file."""
    tensors = {f"state.{k}": v for k, v in load_tensors(run / TRAIN_STATE)[0].items()}
    tensors.update({f"ema.{k}": v for k, v in load_tensors(run / MODEL_LAST)[0].items()})
    return content_hash(tensors)


def losses(run: Path) -> list[str]:
    return (run / LOSSES_CSV).read_text().splitlines()[1:]


def wait_for_training(proc: subprocess.Popen, config: Path, since: float) -> bool:
    """Until the run rewrites config.json (its signal handlers are then in place)."""
    while proc.poll() is None:
        if config.is_file() and config.stat().st_mtime > since:
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="about the whole soak")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="training seed and kill moments")
    parser.add_argument("--threads", type=int, default=1, help="per training process")
    parser.add_argument("--work", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ldseg-soak-"))
    rng = random.Random(args.seed)
    dataset = write_synthetic_dataset(work / "dataset", num_train=20, num_test=0,
                                      shape=(64, 64), seed=args.seed, overwrite=True)
    common = ["--grid", "64,64", "--batch-size", "4", "--iters-per-epoch", str(ITERS),
              "--val-fraction", "0.1", "--steps", "5", "--seed", str(args.seed),
              "--threads", str(args.threads), "--no-progress"]

    # Steps per second, to size the run: the reference and the interrupted run each get
    # about 40% of the time, the rest goes to the restarts.
    probe = work / "probe"
    finish(ldseg("train", str(dataset), "-o", str(probe), "--epochs", "2", "--overwrite",
                 *common, threads=args.threads), "the timing run")
    seconds_per_step = float((probe / LOG_CSV).read_text().splitlines()[-1].split(",")[2]) / (
        2 * ITERS)
    epochs = max(2, round(0.4 * args.minutes * 60 / seconds_per_step / ITERS))
    common += ["--epochs", str(epochs)]
    print(f"{epochs * ITERS} steps of about {seconds_per_step:.2f} s, {args.kills} kills; "
          f"work folder {work}", flush=True)

    reference, interrupted = work / "reference", work / "interrupted"
    t0 = time.monotonic()
    finish(ldseg("train", str(dataset), "-o", str(reference), "--overwrite", *common,
                 threads=args.threads), "the uninterrupted run")
    train_seconds = time.monotonic() - t0

    moments = sorted(rng.uniform(0.02, 0.98) * epochs * ITERS * seconds_per_step
                     for _ in range(args.kills))
    stops, previous, resume = [], 0.0, ["--overwrite"]
    for moment in moments:
        config = interrupted / "config.json"
        since = config.stat().st_mtime if config.is_file() else 0.0
        proc = ldseg("train", str(dataset), "-o", str(interrupted), *common, *resume,
                     threads=args.threads)
        if wait_for_training(proc, config, since):
            time.sleep(moment - previous)
            proc.send_signal(signal.SIGTERM)
        finish(proc, "an interrupted run", signalled=True)
        state = json.loads(load_tensors(interrupted / TRAIN_STATE)[1]["state"])
        stops.append(state["step"])
        print(f"  SIGTERM after {moment - previous:5.1f} s of training: stopped at step "
              f"{state['step']}", flush=True)
        previous, resume = moment, ["--resume"]
    finish(ldseg("train", str(dataset), "-o", str(interrupted), *common, "--resume",
                 threads=args.threads), "the final resume")

    same_losses = losses(reference) == losses(interrupted)
    hashes = {"reference": weights_hash(reference), "interrupted": weights_hash(interrupted)}
    result = {
        "steps": epochs * ITERS, "kills": args.kills, "stopped_at_steps": stops,
        "mid_epoch_stops": sum(1 for s in stops if s % ITERS), "same_losses": same_losses,
        "weights_sha256": hashes, "same_weights": hashes["reference"] == hashes["interrupted"],
        "uninterrupted_training_s": round(train_seconds, 1),
        "total_s": round(time.monotonic() - t0, 1), "threads": args.threads, "seed": args.seed,
    }
    (work / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not (same_losses and result["same_weights"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
