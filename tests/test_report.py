"""`ldseg report`: a self-contained HTML file that real headless Chromium renders without an
error, with every picture decoded and working slice sliders; pictures with the right geometry
and colours; the reverse diffusion ends where prediction ends."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import easy_dataset, save_sitk
from PIL import Image

from ldseg.cli import main
from ldseg.config import ModelConfig, PreprocessConfig, RunConfig, TrainConfig
from ldseg.data.dataset import write_dataset_json
from ldseg.data.imageio import read_image, write_image
from ldseg.diffusion.schedule import NoiseSchedule
from ldseg.inference.predictor import PREDICTION_JSON, Segmenter, predict_folder
from ldseg.inference.sampling import segment_batch
from ldseg.inference.trajectory import reverse_diffusion
from ldseg.model.networks import LDSeg, standardize
from ldseg.pictures import CLASS_COLOURS, ERROR_COLOURS
from ldseg.reporting import build_report
from ldseg.reporting import figures as fig
from ldseg.training.checkpoint import save_model
from ldseg.training.trainer import train

TINY = dict(label_encoder_widths=(8, 8, 8), image_encoder_stem=8, image_encoder_widths=(8, 8),
            denoiser_widths=(8, 16), denoiser_attention=(False, True),
            label_decoder_widths=(8, 8), denoiser_res_blocks=1)
SPACING_3D = (3.2, 0.8, 0.8)  # (z, y, x): anisotropic, so planes must be stretched along z


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny 2D model really trained for a few steps (so log.csv and curves exist)."""
    root = tmp_path_factory.mktemp("r2")
    data = easy_dataset(root / "ds", n=6, n_test=2)
    train(data, root / "run", progress_bar=False, grid=(48, 48), model=ModelConfig(**TINY),
          train=TrainConfig(batch_size=2, epochs=2, iters_per_epoch=2, val_fraction=0.34,
                            warmup_steps=1))
    return root / "run", data


@pytest.fixture(scope="module")
def pred2d(run2d, tmp_path_factory) -> Path:
    run, data = run2d
    out = tmp_path_factory.mktemp("p2") / "pred"
    predict_folder(run, data / "imagesTs", out, steps=3, samples=3, progress_bar=False)
    return out


@pytest.fixture(scope="module")
def case3d(tmp_path_factory) -> dict[str, Path]:
    """A 3D model (untrained weights), a volume with two touching structures and its
    reference, an anisotropic grid, predicted with 2 samples."""
    root = tmp_path_factory.mktemp("r3")
    cfg = RunConfig(
        model=ModelConfig(spatial_dims=3, in_channels=1, num_classes=3, **TINY),
        preprocess=PreprocessConfig(spatial_dims=3, grid=(16, 16, 16), data_spatial_dims=3),
        class_names=("background", "femur", "tibia"), channel_names=("MRI",),
        file_ending=".nii.gz",
    )
    torch.manual_seed(0)
    model = LDSeg(cfg.model)
    save_model(model, cfg, root / "run" / "model_best.safetensors", {})
    zz, yy, xx = np.mgrid[:12, :30, :26]
    label = np.zeros((12, 30, 26), np.uint8)
    label[((zz - 6) / 4) ** 2 + ((yy - 10) / 6) ** 2 + ((xx - 13) / 7) ** 2 < 1] = 1
    label[(np.abs(zz - 6) < 3) & (yy > 17) & (yy < 26) & (np.abs(xx - 13) < 6)] = 2
    image = (200 + 300 * (label == 1) + 600 * (label == 2)
             + np.random.default_rng(0).normal(0, 40, label.shape)).astype(np.int16)
    spacing_xyz = tuple(reversed(SPACING_3D))
    save_sitk(root / "images" / "knee_0000.nii.gz", image, spacing_xyz)
    save_sitk(root / "labels" / "knee.nii.gz", label, spacing_xyz)
    write_dataset_json(root / "ds", ["MRI"], ["background", "femur", "tibia"], 1, ".nii.gz", "k")
    predict_folder(root / "run", root / "images", root / "pred", steps=2, samples=2,
                   progress_bar=False)
    return {"run": root / "run", "pred": root / "pred", "labels": root / "labels",
            "dataset": root / "ds" / "dataset.json", "root": root}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's `chromium`) driven by Playwright; CI must have both."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        reason = ("chromium not found (apt-get install chromium)" if executable is None
                  else "playwright not installed (pip install -e '.[dev]')")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable,
                                     args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def open_report(browser, path: Path):
    """Load the report from disk with the network blocked; return page and its errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.route(re.compile(r"^https?://"), lambda route: (errors.append(route.request.url),
                                                        route.abort()))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, errors


def undecoded_images(page) -> list[str]:
    return page.evaluate("""Array.from(document.images)
        .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)""")


def test_2d_report_renders_in_chromium_and_sorts(pred2d, run2d, browser, tmp_path):
    _, data = run2d
    out = build_report(pred2d, tmp_path / "r2.html", reference=data / "labelsTs",
                       dataset_json=data / "dataset.json")
    page, errors = open_report(browser, out)
    assert page.evaluate("document.images.length") >= 2 * 5 + 3 * 3 + 1  # cases, steps, curves
    assert undecoded_images(page) == []
    dice = "Array.from(document.querySelectorAll('#case-table tbody tr')).map(r => r.cells[2]" \
           ".dataset.v).map(Number)"
    first = page.evaluate(dice)
    assert first == sorted(first)  # worst first
    page.click("#case-table thead th:nth-child(3)")  # sorted ascending: now descending
    assert page.evaluate(dice) == sorted(first, reverse=True)
    page.click("#case-table thead th:nth-child(1)")
    names = page.evaluate("Array.from(document.querySelectorAll('#case-table tbody tr'))"
                          ".map(r => r.cells[0].textContent)")
    assert names == sorted(names)
    shot = tmp_path / "r2.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] == 1280
    assert errors == []


def test_3d_sliders_change_the_displayed_slice(case3d, browser, tmp_path):
    out = build_report(case3d["pred"], tmp_path / "r3.html", reference=case3d["labels"],
                       dataset_json=case3d["dataset"])
    page, errors = open_report(browser, out)
    assert undecoded_images(page) == []
    sliders = page.locator("input.slice")
    assert sliders.count() == 3  # one per orthogonal plane
    for i in range(3):
        slider = sliders.nth(i)
        plane = page.locator(".plane").nth(i)
        shown = "l => l.map(i => [i.dataset.panel, i.src])"
        before = dict(plane.locator("img[data-panel]").evaluate_all(shown))
        label = plane.locator(".slice-label").text_content()
        slider.focus()
        page.keyboard.press("Home")  # a real key press: the browser fires 'input'
        after = dict(plane.locator("img[data-panel]").evaluate_all(shown))
        assert set(after) == {"image", "prediction", "reference", "error", "uncertainty"}
        data = json.loads(page.locator(f"#{slider.get_attribute('data-src')}").text_content())
        assert after == {name: uris[0] for name, uris in data["panels"].items()}  # slice 0
        assert after["image"] != before["image"] and slider.input_value() == "0"
        assert plane.locator(".slice-label").text_content() != label
        assert undecoded_images(page) == []
    shot = tmp_path / "r3.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_report_is_self_contained_and_names_the_classes(case3d, tmp_path):
    out = build_report(case3d["pred"], tmp_path / "r.html", reference=case3d["labels"],
                       dataset_json=case3d["dataset"], png_dir=tmp_path / "png")
    text = out.read_text()
    assert "http://" not in text and "https://" not in text
    sources = re.findall(r'(?<![-\w])src="([^"]*)"', text)
    sources += re.findall(r"url\(&quot;([^&]*)", text)  # layers' background pictures
    assert sources and all(s.startswith("data:image/") for s in sources)
    for name in ("femur", "tibia", "false positive", "false negative"):
        assert name in text
    assert "Reverse diffusion of knee" in text
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    # PNG files in the physical aspect: across x the plane is z (3.2 mm) by y (0.8 mm)
    pngs = {p.name for p in (tmp_path / "png").glob("*.png")}
    across_x = next(n for n in pngs if n.startswith("knee_x") and n.endswith("_error.png"))
    h, w = np.asarray(Image.open(tmp_path / "png" / across_x)).shape[:2]
    assert (h, w) == (12 * 4, 30)
    assert any(n.startswith("diffusion_knee") for n in pngs)


def test_error_map_and_overlay_colours():
    display = np.full((4, 4), 0.5, np.float32)
    pred = np.array([[0, 1, 1, 0]] * 4)
    ref = np.array([[0, 0, 1, 2]] * 4)
    out = fig.flatten(fig._to_uint8(fig._rgb(display)), fig.error_layer(pred, ref))
    as_uint8 = {k: np.rint(v * 255).astype(np.uint8) for k, v in ERROR_COLOURS.items()}
    assert (out[:, 1] == as_uint8["false positive"]).all()
    assert (out[:, 3] == as_uint8["false negative"]).all()
    assert (out[:, 2] < 100).all()  # agreement: the dimmed image
    labels = np.zeros((7, 7), np.int64)
    labels[1:6, 1:6] = 2
    over = fig.overlay(np.zeros((7, 7), np.float32), labels)
    assert (over[1, 3] == np.rint(CLASS_COLOURS[2] * 255)).all()  # opaque outline
    assert (over[0, 0] == 0).all() and 0 < over[3, 3, 2] < over[1, 3, 2]  # translucent fill


def test_windowing_percentiles_for_mri_fixed_window_for_ct():
    image = np.linspace(-1000, 1000, 1001, dtype=np.float32).reshape(1, 7, 143)
    mri = fig.window(image, ["T1"])
    assert mri.min() == 0 and mri.max() == 1 and 0.45 < mri.mean() < 0.55
    ct = fig.window(image, ["CT"])
    flat = image[0]
    assert (ct[flat <= -160] == 0).all() and (ct[flat >= 240] == 1).all()
    assert ct[np.abs(flat - 40) < 1].item() == pytest.approx(0.5, abs=0.01)  # level 40 HU
    rgb = fig.window(np.full((3, 5, 5), 200, np.uint8))
    assert rgb.shape == (5, 5, 3) and np.allclose(rgb, 200 / 255)  # 8-bit colour as stored


def test_reverse_diffusion_ends_at_the_sampled_segmentation(case3d):
    seg = Segmenter.load(case3d["run"])
    image, geometry = read_image(case3d["root"] / "images" / "knee_0000.nii.gz")
    traj = reverse_diffusion(seg, image.astype(np.float32), geometry, steps=4, seed=7)
    assert traj.timesteps == sorted(traj.timesteps, reverse=True) and len(traj.timesteps) == 4
    assert traj.latents.shape == traj.denoised.shape == (4, 1, 4, 4, 4)
    assert traj.labels.shape == traj.denoised_labels.shape == (4, 16, 16, 16)
    last = standardize(torch.from_numpy(traj.denoised[-1])[None])[0].numpy()
    assert np.allclose(traj.latents[-1], last, atol=1e-5)  # the last step returns x0
    with torch.inference_mode():
        out = segment_batch(seg.model, NoiseSchedule(), torch.from_numpy(traj.image)[None],
                            steps=4, generator=torch.Generator().manual_seed(7))
    assert np.array_equal(traj.labels[-1], out.mean_probs[0].argmax(0).numpy())


def test_prediction_json_lets_the_report_find_model_and_images(case3d, tmp_path, capsys):
    info = json.loads((case3d["pred"] / PREDICTION_JSON).read_text())
    assert Path(info["model"]) == (case3d["run"] / "model_best.safetensors").resolve()
    assert Path(info["input"]) == (case3d["root"] / "images").resolve()
    assert (info["steps"], info["eta"], info["samples"], info["seed"]) == (2, 1.0, 2, 0)
    pred = tmp_path / "pred"
    shutil.copytree(case3d["pred"], pred)
    (tmp_path / "noise").mkdir()  # as `ldseg robustness -o noise` writes it
    (tmp_path / "noise" / "robustness.csv").write_text(
        "model,sigma,case,class,dice,hd95\nm,0,knee,femur,0.5,3\nm,0,mean,foreground,0.8,2\n"
        "m,0.1,mean,foreground,0.6,4\n")
    assert main(["report", str(pred), "--max-slices", "4", "--png", str(tmp_path / "p"),
                 "--robustness", str(tmp_path / "noise")]) == 0
    text = (pred / "report.html").read_text()
    assert "Reverse diffusion of knee" in text and "Noise robustness" in text
    assert "no metrics" in text  # no reference given and no summary.json
    assert (tmp_path / "p" / "robustness.png").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "missing: folder not found" in capsys.readouterr().err


def test_predict_and_evaluate_write_reports(run2d, tmp_path):
    run, data = run2d
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(run), "-i", str(data / "imagesTs"), "-o", str(out),
                 "--steps", "2", "--no-progress", "--report"]) == 0
    assert (out / "report.html").is_file()
    summary = tmp_path / "eval" / "summary.json"
    assert main(["evaluate", str(out), str(data / "labelsTs"), "-d", str(data / "dataset.json"),
                 "-o", str(summary), "--report"]) == 0
    text = (tmp_path / "eval" / "report.html").read_text()
    assert 'id="case-table"' in text and "disc" in text and "square" in text
    write_image(tmp_path / "bad" / "c06.png", np.zeros((5, 5), np.uint8))  # wrong size
    shutil.copy(out / PREDICTION_JSON, tmp_path / "bad" / PREDICTION_JSON)
    assert main(["report", str(tmp_path / "bad"), "--no-diffusion"]) == 1


def test_plane_geometry_helpers():
    mask = np.zeros((10, 20, 30), bool)
    mask[2:5, 5:15, 10:12] = True
    assert fig.centre_of(mask) == (3, 10, 10)
    positions = fig.slice_positions(mask, 1, 10, 4)
    assert 10 in positions and len(positions) <= 5 and positions[0] >= 3 and positions[-1] <= 16
    assert fig.display_size((12, 30), (3.2, 0.8), 1000) == (48, 30)
    assert fig.display_size((100, 400), (1.0, 1.0), 200) == (50, 200)
    volume = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(fig.plane(volume, 2, 0), volume[::-1, :, 0])  # z up
