"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ldseg.data.dataset import write_dataset_json
from ldseg.data.imageio import write_image

# A non-trivial geometry: anisotropic spacing, an origin off zero, a rotated direction.
SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN = (10.0, -5.0, 3.0)
_C, _S = float(np.cos(np.pi / 6)), float(np.sin(np.pi / 6))
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write with Pillow directly (not ldseg's writer), so readers are tested independently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        Image.fromarray(np.moveaxis(array, 0, -1), mode="RGB").save(path)
    else:
        Image.fromarray(array).save(path)


def save_sitk(path: Path, array: np.ndarray, spacing=SPACING_XYZ, origin=ORIGIN,
              direction=DIRECTION) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data (GlaS, knee MRI) kept outside the repo in ../shared/data."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        reason = f"sample data folder {path} not found (it lives outside the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def easy_dataset(root: Path, n: int = 12, size: int = 48, seed: int = 0, n_test: int = 0) -> Path:
    """A disc (class 1) and a square (class 2) on noise: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n + n_test):
        split = "Tr" if i < n else "Ts"
        label = np.zeros((size, size), np.uint8)
        cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(7, 11)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
        sy, sx = rng.integers(0, size - 12, 2)
        label[sy:sy + 10, sx:sx + 10] = 2
        image = 100 + 60 * (label == 1) - 60 * (label == 2) + rng.normal(0, 15, label.shape)
        write_image(root / f"images{split}" / f"c{i:02d}_0000.png",
                    np.clip(image, 0, 255).astype("u1"))
        write_image(root / f"labels{split}" / f"c{i:02d}.png", label)
    write_dataset_json(root, ["grey"], ["background", "disc", "square"], n, ".png", "easy")
    return root


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return easy_dataset(tmp_path_factory.mktemp("easy") / "ds", n_test=3)
