"""A run killed by SIGTERM in a subprocess and resumed gives the same losses and weights as an
uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import easy_dataset

from ldseg.cli import main
from ldseg.training.checkpoint import load_tensors
from ldseg.training.trainer import LOSSES_CSV, MODEL_LAST, TRAIN_STATE

EPOCHS, ITERS = 5, 3
ARGS = ["--grid", "32,32", "--epochs", str(EPOCHS), "--iters-per-epoch", str(ITERS),
        "--batch-size", "2", "--val-fraction", "0", "--threads", "1", "--no-progress",
        "--seed", "7"]


def losses(run) -> list[float]:
    return [float(line.split(",")[1]) for line in
            (run / LOSSES_CSV).read_text().splitlines()[1:]]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ldseg.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
    ds = easy_dataset(tmp_path / "ds", n=8)
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", str(ds), "-o", str(full), *ARGS]) == 0
    total = EPOCHS * ITERS

    proc = cli("train", str(ds), "-o", str(part), *ARGS)
    deadline = time.monotonic() + 120
    # The losses file is rewritten at every epoch end: after two epochs, stop it mid-run.
    while not ((part / LOSSES_CSV).is_file() and len(losses(part)) >= 2 * ITERS):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err  # a clean exit after the checkpoint, not a kill
    stopped = load_tensors(part / TRAIN_STATE)[1]
    done = len(losses(part))
    assert 2 * ITERS <= done < total and f"trained {done} steps" in out
    assert f'"step": {done},' in stopped["state"]

    proc = cli("train", str(ds), "-o", str(part), *ARGS, "--resume")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert losses(part) == losses(full)  # bit for bit, steps 1..done and done+1..total
    assert len(losses(full)) == total
    for name in (MODEL_LAST, TRAIN_STATE):  # EMA; and model, EMA, optimizer, RNG, data order
        a, b = load_tensors(full / name)[0], load_tensors(part / name)[0]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
