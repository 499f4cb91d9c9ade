"""Two CPU processes under torchrun (gloo) train exactly what one process trains on the same
global batch, `ldseg train` and `ldseg predict` run unchanged under torchrun, and a prediction
folder is split between the ranks.

One torchrun launch runs `rank_main` below in both processes; the tests compare what the ranks
recorded with one process doing the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for conftest when run by torchrun

from conftest import easy_dataset  # noqa: E402

from ldseg.cli import main  # noqa: E402
from ldseg.config import DiffusionConfig, ModelConfig, TrainConfig  # noqa: E402
from ldseg.data.dataset import list_cases, load_dataset_spec  # noqa: E402
from ldseg.data.imageio import read_image  # noqa: E402
from ldseg.inference.predictor import PREDICTION_JSON, predict_folder  # noqa: E402
from ldseg.training.checkpoint import load_model_file  # noqa: E402
from ldseg.training.distributed import Dist, session  # noqa: E402
from ldseg.training.plan import plan_run  # noqa: E402
from ldseg.training.trainer import LOSSES_CSV, MODEL_LAST, Trainer, train  # noqa: E402

SMALL = ModelConfig(label_encoder_widths=(8, 16, 16), image_encoder_stem=8,
                    image_encoder_widths=(16, 16), denoiser_widths=(16, 32),
                    denoiser_attention=(False, True), label_decoder_widths=(16, 16),
                    denoiser_res_blocks=1, latent_channels=2, image_latent_channels=2)
STEPS = 3
CLI_TRAIN = ["--grid", "32,32", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "4",
             "--val-fraction", "0.2", "--steps", "2", "--threads", "1", "--no-progress"]


def make_trainer(ds: Path, run: Path, dist: Dist | None = None) -> Trainer:
    spec = load_dataset_spec(ds)
    # Flips, intensity and noise augmentation all on: their random numbers must follow the
    # global batch, not the rank.
    tc = TrainConfig(batch_size=4, lr=2e-3, warmup_steps=1, seed=5, flip_axes=(0, 1),
                     val_fraction=0)
    config = plan_run(spec, [(48, 48)], [(1.0, 1.0)], grid=(32, 32), model=SMALL, train=tc,
                      auto_flips=False)
    return Trainer(config, run, list_cases(spec), [], progress_bar=False, dist=dist)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def rank_main(tmp: Path) -> None:
    """What each rank runs (started by torchrun, see the fixture)."""
    torch.set_num_threads(1)
    with session() as dist:
        trainer = make_trainer(tmp / "ds", tmp / "run", dist)
        record: dict = {"loss": [], "grads": [], "weights": [], "ema": []}
        for _ in range(STEPS):
            record["loss"].append(trainer.train_step(0.0)["loss"])
            record["grads"].append(flat_grad(trainer.model))
            record["weights"].append(flat(trainer.model))
            record["ema"].append(flat(trainer.ema))
        # The command line as torchrun runs it, in the same process group.
        assert main(["train", str(tmp / "ds"), "-o", str(tmp / "cli"), *CLI_TRAIN]) == 0
        assert main(["predict", "-m", str(tmp / "cli"), "-i", str(tmp / "ds" / "imagesTs"),
                     "-o", str(tmp / "pred2"), "--steps", "2", "--no-pictures",
                     "--no-progress"]) == 0
    torch.save(record, tmp / f"rank{dist.rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    easy_dataset(tmp / "ds", n=10, n_test=5)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         __file__, str(tmp)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, [torch.load(tmp / f"rank{r}.pt") for r in range(2)], proc.stdout


def test_both_ranks_hold_identical_weights_after_every_step(two_ranks):
    _, (r0, r1), _ = two_ranks
    for step in range(STEPS):
        assert torch.equal(r0["weights"][step], r1["weights"][step]), step
        assert torch.equal(r0["ema"][step], r1["ema"][step]), step
        assert r0["loss"][step] == r1["loss"][step]  # the global batch's loss on both
    assert not torch.equal(r0["weights"][0], r0["weights"][-1])  # it did train


def close_but_for_adam_noise(a: torch.Tensor, b: torch.Tensor, bound: float) -> None:
    """Adam divides by sqrt(v): gradients that are zero in exact arithmetic (a conv bias before
    a one-channel GroupNorm group) turn float noise into steps of about +-lr. Such weights do not
    change the output (the losses agree to 1e-5); every other weight matches."""
    diff = (a - b).abs()
    assert (diff > 1e-5).float().mean() < 1e-3
    assert diff.max() < bound


def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks):
    tmp, (r0, _), _ = two_ranks
    torch.set_num_threads(1)
    single = make_trainer(tmp / "ds", tmp / "single")
    lr = single.config.train.lr
    for step in range(STEPS):
        loss = single.train_step(0.0)["loss"]
        assert loss == pytest.approx(r0["loss"][step], rel=1e-5), step
        if step == 0:  # same weights, same global batch: DDP's averaged gradient is the same
            torch.testing.assert_close(flat_grad(single.model), r0["grads"][0], rtol=1e-4,
                                       atol=1e-5)
        close_but_for_adam_noise(flat(single.model), r0["weights"][step], 4 * lr * (step + 1))
        close_but_for_adam_noise(flat(single.ema), r0["ema"][step], 4 * lr * (step + 1))


def test_ldseg_train_runs_unchanged_under_torchrun(two_ranks):
    tmp, _, stdout = two_ranks
    assert stdout.count("trained 2 steps") == 1  # rank 0 reports, rank 1 is silent
    state = train(tmp / "ds", tmp / "one", progress_bar=False, grid=(32, 32),
                  train=TrainConfig(batch_size=4, epochs=1, iters_per_epoch=2, val_fraction=0.2,
                                    num_threads=1),
                  diffusion=DiffusionConfig(sampling_steps=2))
    lines = (tmp / "cli" / LOSSES_CSV).read_text().splitlines()[1:]
    assert [float(line.split(",")[1]) for line in lines] == pytest.approx(state.losses, rel=1e-5)
    ddp, one = (load_model_file(tmp / d / MODEL_LAST)[1] for d in ("cli", "one"))
    close_but_for_adam_noise(torch.cat([ddp[k].reshape(-1) for k in one]),
                             torch.cat([one[k].reshape(-1) for k in one]), 1e-2)
    # Validation (2 cases, one per rank) gathered into the same Dice as one process.
    log = (tmp / "cli" / "log.csv").read_text().splitlines()
    assert len(log) == 2
    assert float(log[1].split(",")[log[0].split(",").index("val_dice")]) == pytest.approx(
        state.history[-1]["val_dice"], abs=1e-6)


def test_prediction_splits_the_cases_and_writes_each_once(two_ranks):
    tmp, _, stdout = two_ranks
    names = [f"c{i:02d}.png" for i in range(10, 15)]
    assert "rank 0: wrote 3 segmentation(s)" in stdout
    assert "rank 1: wrote 2 segmentation(s)" in stdout
    assert sorted(p.name for p in (tmp / "pred2").glob("*.png")) == names
    assert (tmp / "pred2" / PREDICTION_JSON).is_file()
    # Same labels as one process: the sampling noise is seeded per case, not per rank.
    predict_folder(tmp / "cli", tmp / "ds" / "imagesTs", tmp / "pred1", steps=2, pictures=False,
                   progress_bar=False)
    for name in names:
        assert np.array_equal(read_image(tmp / "pred1" / name)[0],
                              read_image(tmp / "pred2" / name)[0]), name


if __name__ == "__main__":  # one rank, started by torchrun from the fixture
    rank_main(Path(sys.argv[1]))
