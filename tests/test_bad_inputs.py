"""Every bad input of the README's "Bad input" table: one line naming the file and the problem,
exit status 1, no traceback, nothing half written."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from conftest import easy_dataset

from ldseg.cli import main
from ldseg.config import ModelConfig, PreprocessConfig, RunConfig
from ldseg.data.dataset import write_dataset_json
from ldseg.data.imageio import read_image, write_image
from ldseg.data.preprocessing import finite_image
from ldseg.errors import LdsegError
from ldseg.model.networks import LDSeg
from ldseg.training.checkpoint import load_tensors, save_model
from ldseg.training.distributed import Dist
from ldseg.training.memory import training_bytes
from ldseg.training.trainer import LOSSES_CSV, TRAIN_STATE

TINY = dict(label_encoder_widths=(8, 8, 8), image_encoder_stem=8, image_encoder_widths=(8, 8),
            denoiser_widths=(8, 16), denoiser_attention=(False, True),
            label_decoder_widths=(8, 8), denoiser_res_blocks=1)
FAST = ["--grid", "32,32", "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2",
        "--val-fraction", "0", "--no-progress"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    args = [str(a) for a in args]
    if args[0] == "predict" and "--no-progress" not in args:
        args.append("--no-progress")
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("ldseg: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    return easy_dataset(tmp_path_factory.mktemp("bad") / "ds", n=6, n_test=1)


def float_dataset(root, bad: dict[int, float]):
    """Six float32 TIFF cases; case i gets the value bad[i] in a corner (NaN or +-Inf)."""
    rng = np.random.default_rng(0)
    for i in range(6):
        label = np.zeros((32, 32), np.uint8)
        label[8:20, 8:20] = 1
        image = (100 + 50 * label + rng.normal(0, 5, label.shape)).astype(np.float32)
        if i in bad:
            image[:3, :3] = bad[i]
        write_image(root / "imagesTr" / f"c{i}_0000.tif", image)
        write_image(root / "labelsTr" / f"c{i}.tif", label)
    write_dataset_json(root, ["CT"], ["background", "organ"], 6, ".tif", "float")
    return root


def tiny_run(root, ending=".png", data_dims=2, channels=1):
    config = RunConfig(
        model=ModelConfig(spatial_dims=2, in_channels=channels, num_classes=2, **TINY),
        preprocess=PreprocessConfig(spatial_dims=2, grid=(16, 16), data_spatial_dims=data_dims,
                                    slice_axis=-1 if data_dims == 2 else 0),
        class_names=("background", "organ"), file_ending=ending)
    torch.manual_seed(0)
    save_model(LDSeg(config.model), config, root / "model_best.safetensors", {})
    return root


# ---- NaN / Inf in images -----------------------------------------------------------------------

def test_nan_in_a_training_image_is_refused_with_its_file_name(tmp_path, capsys):
    ds = float_dataset(tmp_path / "ds", {1: np.nan, 4: np.inf})
    code, _, err = run_cli(capsys, "train", ds, "-o", tmp_path / "run", *FAST)
    line = one_line_error(code, err)
    assert "c1_0000.tif: image contains NaN or Inf values (9 voxels)" in line
    assert "--allow-nan" in line and "1 more problem" in line  # c4's +Inf too
    assert not (tmp_path / "run").exists()
    code, out, _ = run_cli(capsys, "check", ds)
    assert code == 1 and "c1_0000.tif" in out and "c4_0000.tif" in out


def test_allow_nan_cleans_training_images_with_a_warning(tmp_path, capsys):
    ds = float_dataset(tmp_path / "ds", {1: np.nan, 4: -np.inf})
    with pytest.warns(UserWarning) as caught:
        code, out, err = run_cli(capsys, "train", ds, "-o", tmp_path / "run", *FAST,
                                 "--allow-nan")
    assert code == 0, err
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "c1_0000.tif: replaced 9 NaN/Inf voxel(s)" in messages[0]
    assert "c4_0000.tif: replaced 9" in messages[1]
    loss = float((tmp_path / "run" / LOSSES_CSV).read_text().splitlines()[1].split(",")[1])
    assert np.isfinite(loss)


def test_finite_image_replaces_by_the_channel_minimum_and_maximum():
    image = np.array([[[1.0, np.nan], [np.inf, -np.inf]], [[5.0, 7.0], [np.nan, 6.0]]],
                     np.float32)
    with pytest.warns(UserWarning, match="replaced 4 NaN/Inf"):
        clean = finite_image(image, "x.nii.gz", allow_nan=True)
    assert clean.tolist() == [[[1.0, 1.0], [1.0, 1.0]], [[5.0, 7.0], [5.0, 6.0]]]
    assert np.isnan(image[0, 0, 1])  # the caller's array is left alone
    with pytest.raises(LdsegError, match="x.nii.gz: image contains NaN or Inf values"):
        finite_image(image, "x.nii.gz")
    ints = np.ones((1, 2, 2), np.uint8)
    assert finite_image(ints, "y.png") is ints


def test_nan_at_predict_refused_or_cleaned(tmp_path, capsys):
    run = tiny_run(tmp_path / "run", ending=".tif")
    image = np.full((20, 20), 3.0, np.float32)
    image[0, 0] = np.nan
    write_image(tmp_path / "in" / "a_0000.tif", image)
    code, _, err = run_cli(capsys, "predict", "-m", run, "-i", tmp_path / "in",
                           "-o", tmp_path / "out", "--steps", "1", "--no-progress")
    assert "a_0000.tif: image contains NaN or Inf values (1 voxels)" in one_line_error(code, err)
    assert not list((tmp_path / "out").glob("*.tif"))
    with pytest.warns(UserWarning, match="a_0000.tif: replaced 1 NaN/Inf voxel"):
        code, _, err = run_cli(capsys, "predict", "-m", run, "-i", tmp_path / "in",
                               "-o", tmp_path / "out", "--steps", "1", "--allow-nan",
                               "--overwrite")
    assert code == 0, err
    assert read_image(tmp_path / "out" / "a.tif")[0].shape == (1, 20, 20)


# ---- empty and single-class data sets -----------------------------------------------------------

def test_empty_dataset(tmp_path, capsys):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    write_dataset_json(ds, ["MRI"], ["background", "organ"], 0, ".nii.gz", "empty")
    code, _, err = run_cli(capsys, "train", ds, "-o", tmp_path / "run", *FAST)
    assert "imagesTr: no cases found" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()
    (tmp_path / "in").mkdir()
    code, _, err = run_cli(capsys, "predict", "-m", tiny_run(tmp_path / "m"), "-i",
                           tmp_path / "in", "-o", tmp_path / "out")
    assert "the folder is empty" in one_line_error(code, err)


def test_only_background_declared(tmp_path, easy, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(easy, ds)
    (ds / "dataset.json").write_text('{"channel_names": {"0": "grey"}, "labels": '
                                     '{"background": 0}, "numTraining": 6, '
                                     '"file_ending": ".png"}')
    code, _, err = run_cli(capsys, "train", ds, "-o", tmp_path / "run", *FAST)
    assert "needs background (0) and at least one class" in one_line_error(code, err)


def test_only_background_present(tmp_path, easy, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(easy, ds)
    for label in (ds / "labelsTr").iterdir():
        write_image(label, np.zeros(read_image(label)[0].shape[1:], np.uint8))
    code, _, err = run_cli(capsys, "train", ds, "-o", tmp_path / "run", *FAST)
    assert "labelsTr: every label map is background only" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


# ---- what the model was trained on --------------------------------------------------------------

def test_2d_model_given_3d_data_and_the_reverse(tmp_path, capsys):
    model_2d = tiny_run(tmp_path / "m2")
    write_image(tmp_path / "vol" / "a_0000.nii.gz", np.zeros((4, 20, 20), np.uint8))
    code, _, err = run_cli(capsys, "predict", "-m", model_2d, "-i", tmp_path / "vol",
                           "-o", tmp_path / "o1")
    line = one_line_error(code, err)
    assert "holds 3D images (.nii.gz), the model was trained on 2D images (.png)" in line
    code, _, err = run_cli(capsys, "predict", "-m", model_2d, "-i",
                           tmp_path / "vol" / "a_0000.nii.gz", "-o", tmp_path / "o2")
    line = one_line_error(code, err)
    assert "a_0000.nii.gz: is a 3D image" in line and "trained on 2D images" in line

    model_3d = tiny_run(tmp_path / "m3", ending=".nii.gz", data_dims=3)  # a 2D model on slices
    write_image(tmp_path / "flat" / "b_0000.png", np.zeros((20, 20), np.uint8))
    code, _, err = run_cli(capsys, "predict", "-m", model_3d, "-i", tmp_path / "flat",
                           "-o", tmp_path / "o3")
    line = one_line_error(code, err)
    assert "holds 2D images (.png), the model was trained on 3D images (.nii.gz)" in line
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))


def test_rgb_image_for_a_grey_model(tmp_path, capsys):
    write_image(tmp_path / "in" / "x_0000.png", np.zeros((20, 20), np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "in" / "x_0000.png")
    code, _, err = run_cli(capsys, "predict", "-m", tiny_run(tmp_path / "m"), "-i",
                           tmp_path / "in", "-o", tmp_path / "out")
    assert "has 3 channel(s), the model was trained on 1" in one_line_error(code, err)


# ---- output folders -----------------------------------------------------------------------------

def test_train_into_a_folder_with_other_content(tmp_path, easy, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "train", easy, "-o", run, *FAST)
    assert "output folder exists and is not empty" in one_line_error(code, err)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    code, _, err = run_cli(capsys, "train", easy, "-o", run, *FAST, "--overwrite")
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine" and (run / TRAIN_STATE).is_file()


def test_predict_into_a_folder_with_other_content(tmp_path, easy, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "predict", "-m", tiny_run(tmp_path / "m"), "-i",
                           easy / "imagesTs", "-o", tmp_path / "out")
    assert "not empty (use --overwrite" in one_line_error(code, err)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("command", ["train", "predict"])
def test_output_folder_that_cannot_be_created(tmp_path, easy, capsys, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "run"
    args = ([easy, "-o", out, *FAST] if command == "train"
            else ["-m", tiny_run(tmp_path / "m"), "-i", easy / "imagesTs", "-o", out])
    code, _, err = run_cli(capsys, command, *args)
    assert f"{out}: cannot create the output folder ({blocker} is a file)" in one_line_error(
        code, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_output_folder(tmp_path, easy, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = run_cli(capsys, "train", easy, "-o", locked / "run", *FAST)
        assert "output folder is not writable" in one_line_error(code, err)
    finally:
        locked.chmod(0o700)


# ---- memory and numbers -------------------------------------------------------------------------

def test_a_grid_too_large_for_memory_is_refused_before_allocating(tmp_path, easy, capsys):
    code, _, err = run_cli(capsys, "train", easy, "-o", tmp_path / "run", "--grid", "8192,8192",
                           "--batch-size", "4", "--no-progress")
    line = one_line_error(code, err)
    assert "training on grid 8192x8192 with batch 4 needs about" in line
    assert "GB available; lower --max-voxels (or --grid) or --batch-size" in line
    assert not (tmp_path / "run").exists()


def test_memory_estimate_grows_with_grid_and_batch():
    def estimate(grid, batch):
        config = RunConfig(model=ModelConfig(**TINY),
                           preprocess=PreprocessConfig(grid=grid))
        return training_bytes(config, batch, samples=10)

    small, data_small = estimate((64, 64), 2)
    double_batch, _ = estimate((64, 64), 4)
    big, data_big = estimate((256, 256), 2)
    assert small < double_batch < 2 * small  # weights and workspace do not double
    assert 8 * (double_batch - small) < big - small  # 16x the voxels, 8x one batch's share
    assert data_big == 16 * data_small == 16 * 10 * 64 * 64 * 5


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, easy, capsys):
    run = tmp_path / "run"
    # Adam steps of ~1e28 after the first step: the second step's loss is not finite.
    code, _, err = run_cli(capsys, "train", easy, "-o", run, "--grid", "32,32", "--epochs", "3",
                           "--iters-per-epoch", "1", "--batch-size", "2", "--val-fraction", "0",
                           "--lr", "1e30", "--no-progress")
    line = one_line_error(code, err)
    assert "loss became nan at step 1" in line and "last good checkpoint" in line
    tensors, meta = load_tensors(run / TRAIN_STATE)  # intact: its hash checks out
    assert '"step": 1,' in meta["state"]
    assert len((run / LOSSES_CSV).read_text().splitlines()) == 2  # header + the good step


def test_a_batch_that_does_not_split_over_the_processes():
    with pytest.raises(LdsegError, match="--batch-size 3 cannot be split evenly over 2 proc"):
        Dist(world_size=2).check_batch(3)
