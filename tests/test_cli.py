"""The CLI end to end on a tiny config, and bad input ending in one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ldseg.cli import main
from ldseg.data.imageio import read_image, write_image

FAST = ["--grid", "32,32", "--epochs", "2", "--iters-per-epoch", "3", "--batch-size", "2",
        "--no-progress", "--steps", "3"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_train_predict_evaluate(tmp_path, easy, capsys):
    # Paired folders as users have them: images and labels with a suffix.
    images, labels = tmp_path / "img", tmp_path / "lab"
    for case in sorted((easy / "imagesTr").iterdir())[:6]:
        name = case.name.replace("_0000", "")
        write_image(images / name, read_image(case)[0][0])
        write_image(labels / name.replace(".png", "_label.png"),
                    read_image(easy / "labelsTr" / name)[0][0])
    ds = tmp_path / "ds"
    code, out, _ = run_cli(["import", images, labels, "-o", ds, "--class-names",
                            "background,disc,square", "--test-cases", "c05"], capsys)
    assert code == 0 and "imported 5 case(s)" in out
    assert run_cli(["check", ds], capsys)[0] == 0

    run = tmp_path / "run"
    code, out, _ = run_cli(["train", ds, "-o", run, *FAST], capsys)
    assert code == 0 and "trained 6 steps" in out
    assert json.loads((run / "config.json").read_text())["preprocess"]["grid"] == [32, 32]

    code, _, _ = run_cli(["train", ds, "-o", run, *FAST[:2], "--epochs", "3", "--resume",
                          "--no-progress"], capsys)
    assert code == 0
    assert (run / "log.csv").read_text().count("\n") == 4  # 3 epochs + header

    pred = tmp_path / "pred"
    code, out, _ = run_cli(["predict", "-m", run, "-i", ds / "imagesTs", "-o", pred,
                            "--steps", "2", "--samples", "2", "--no-progress"], capsys)
    assert code == 0 and "wrote 1 segmentation" in out
    assert read_image(pred / "c05.png")[0].shape == (1, 48, 48)
    assert (pred / "uncertainty" / "c05.tif").is_file()
    assert (pred / "pictures" / "c05.png").is_file()

    code, out, _ = run_cli(["evaluate", pred, ds / "labelsTs", "-d", ds / "dataset.json"],
                           capsys)
    assert code == 0 and "disc" in out
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary) >= {"metric_per_case", "mean", "foreground_mean"}

    code, out, _ = run_cli(["info", run], capsys)
    assert code == 0 and json.loads(out)["total"] > 1_000_000


def broken_copy(easy, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(easy, ds)
    return ds


def one_line_error(code, err):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("ldseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_dataset_json(tmp_path, easy, capsys):
    ds = broken_copy(easy, tmp_path)
    (ds / "dataset.json").unlink()
    code, _, err = run_cli(["train", ds, "-o", tmp_path / "run", *FAST], capsys)
    assert "dataset.json: not found" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


def test_malformed_dataset_json(tmp_path, easy, capsys):
    ds = broken_copy(easy, tmp_path)
    (ds / "dataset.json").write_text('{"labels": {"background": 0,')
    code, _, err = run_cli(["check", ds], capsys)
    assert "invalid JSON" in one_line_error(code, err)


def test_missing_channel_file_and_corrupt_image_are_all_reported(tmp_path, easy, capsys):
    ds = broken_copy(easy, tmp_path)
    (ds / "imagesTr" / "c00_0000.png").unlink()
    (ds / "imagesTr" / "c01_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, _ = run_cli(["check", ds], capsys)
    assert code == 1
    assert "c00" in out and "c01_0000.png" in out
    code, _, err = run_cli(["train", ds, "-o", tmp_path / "run", *FAST], capsys)
    line = one_line_error(code, err)
    assert "more problem" in line
    assert not (tmp_path / "run").exists()


def test_undeclared_label_values(tmp_path, easy, capsys):
    ds = broken_copy(easy, tmp_path)
    write_image(ds / "labelsTr" / "c03.png", np.full((48, 48), 7, np.uint8))
    code, out, _ = run_cli(["check", ds], capsys)
    assert code == 1 and "c03.png" in out and "7" in out


def test_predict_channel_mismatch_via_subprocess(tmp_path, easy, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", easy, "-o", run, *FAST], capsys)[0] == 0
    inp = tmp_path / "in"
    write_image(inp / "x_0000.png", np.zeros((30, 30), np.uint8))
    write_image(inp / "x_0001.png", np.zeros((30, 30), np.uint8))
    proc = subprocess.run(
        [sys.executable, "-m", "ldseg.cli", "predict", "-m", str(run), "-i", str(inp),
         "-o", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    line = one_line_error(proc.returncode, proc.stderr)
    assert "x_0000.png" in line and "channel" in line
    assert not list((tmp_path / "out").glob("*.png"))


def test_corrupt_checkpoint(tmp_path, easy, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", easy, "-o", run, *FAST], capsys)[0] == 0
    data = (run / "model_best.safetensors").read_bytes()
    (run / "model_best.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["predict", "-m", run, "-i", easy / "imagesTs", "-o",
                            tmp_path / "out", "--no-progress"], capsys)
    assert "corrupt or truncated" in one_line_error(code, err)


@pytest.mark.parametrize("args", [["predict", "-m", "nowhere", "-i", ".", "-o", "x"],
                                  ["evaluate", "nowhere", "nothing"]])
def test_missing_paths(args, capsys):
    code, _, err = run_cli(args, capsys)
    one_line_error(code, err)


def test_model_size_and_noise_flags_reach_the_saved_config(tmp_path, easy, capsys):
    widths, noise, image_latent, prob, timesteps, dice = {}, {}, {}, {}, {}, {}
    steps, noise_weight, seg_grad = {}, {}, {}
    for size in ("lean", "reference"):
        run = tmp_path / size
        # lean, a planned latent factor, 4 image-latent channels, noise 2.0 (2D) and late
        # timesteps are the defaults
        flags = [] if size == "lean" else ["--size", "reference", "--noise-augment", "0.3",
                                           "--downsamplings", "3", "--image-latent-channels", "2",
                                           "--noise-augment-prob", "0.5",
                                           "--timestep-sampling", "uniform",
                                           "--dice-weight", "0.5", "--steps", "4",
                                           "--noise-weight", "10",
                                           "--denoiser-seg-grad", "0.5"]
        assert run_cli(["train", easy, "-o", run, *FAST[:2], "--epochs", "1",
                        "--iters-per-epoch", "1", "--batch-size", "2", "--no-progress",
                        *flags], capsys)[0] == 0
        config = json.loads((run / "config.json").read_text())
        model, noise[size] = config["model"], config["train"]["noise_augment_std"]
        prob[size] = config["train"]["noise_augment_prob"]
        timesteps[size] = config["diffusion"]["timestep_sampling"]
        dice[size] = config["train"]["gamma_dice"]
        noise_weight[size] = config["train"]["lambda_noise"]
        seg_grad[size] = config["train"]["denoiser_segmentation_grad"]
        steps[size] = config["diffusion"]["sampling_steps"]
        widths[size] = (model["label_encoder_widths"], model["image_encoder_widths"],
                        model["label_decoder_widths"])
        image_latent[size] = model["image_latent_channels"]
    assert widths["reference"] == ([16, 32, 64, 32], [32, 64, 32], [32, 64, 32])
    # a 32x32 grid: the planner keeps a 16x16 latent, one downsampling
    assert widths["lean"] == ([8, 32], [32], [32])
    assert image_latent == {"lean": 4, "reference": 2}
    assert noise == {"lean": 2.0, "reference": 0.3}  # planned for a 2D model
    assert prob == {"lean": 1.0, "reference": 0.5}
    assert timesteps == {"lean": "late", "reference": "uniform"}
    assert dice == {"lean": 2.0, "reference": 0.5}  # the method page's gamma by default
    assert steps == {"lean": 15, "reference": 4}  # planned for a 2D model unless given
    assert noise_weight == {"lean": 1.0, "reference": 10.0}  # the method page's lambda = 1
    assert seg_grad == {"lean": 0.1, "reference": 0.5}  # planned for LDSeg unless given
    for flag, value, field in (("--noise-augment-prob", "1.5", "noise_augment_prob"),
                               ("--dice-weight", "-1", "gamma_dice"),
                               ("--noise-weight", "-1", "lambda_noise"),
                               ("--denoiser-seg-grad", "2", "denoiser_segmentation_grad")):
        code, _, err = run_cli(["train", easy, "-o", tmp_path / "bad", flag, value,
                                "--no-progress"], capsys)
        one_line_error(code, err)
        assert field in err and not (tmp_path / "bad" / "config.json").exists()


def test_train_leaves_the_denoiser_share_to_the_planner_unless_given(monkeypatch, easy, tmp_path,
                                                                      capsys):
    """The planned default (DEFAULT_DENOISER_SEG_GRAD, test_plan.py) reaches `ldseg train` only if
    the CLI asks the planner for it when the flag is absent."""
    from ldseg.training import trainer

    seen = []
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: seen.append(kw) or trainer.TrainState())
    assert run_cli(["train", easy, "-o", tmp_path / "a", "--no-progress"], capsys)[0] == 0
    assert run_cli(["train", easy, "-o", tmp_path / "b", "--no-progress",
                    "--denoiser-seg-grad", "0.3"], capsys)[0] == 0
    assert [kw["auto_seg_grad"] for kw in seen] == [True, False]
    assert seen[1]["train"].denoiser_segmentation_grad == 0.3
