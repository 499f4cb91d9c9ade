"""The synthetic demo data: deterministic, consistent, touching classes, and not thresholdable."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ldseg.data.imageio import read_image
from ldseg.data.synthetic import (
    SyntheticSpec,
    best_assignment_dice,
    generate_case,
    generate_moving_sequence,
    otsu_baseline,
    otsu_thresholds,
    write_synthetic_dataset,
)
from ldseg.errors import LdsegError


def _cases(dims: int, n: int, seed: int = 123) -> list[tuple[np.ndarray, np.ndarray]]:
    spec = SyntheticSpec(spatial_dims=dims)
    return [generate_case(spec, np.random.default_rng([seed, i])) for i in range(n)]


def _touching(label: np.ndarray, a: int, b: int) -> bool:
    """Some voxel of class a has a face neighbour of class b."""
    for axis in range(label.ndim):
        lo = np.take(label, np.arange(label.shape[axis] - 1), axis=axis)
        hi = np.take(label, np.arange(1, label.shape[axis]), axis=axis)
        if np.any((lo == a) & (hi == b)) or np.any((lo == b) & (hi == a)):
            return True
    return False


def test_deterministic_given_seed() -> None:
    spec = SyntheticSpec()
    img1, lab1 = generate_case(spec, np.random.default_rng(5))
    img2, lab2 = generate_case(spec, np.random.default_rng(5))
    img3, _ = generate_case(spec, np.random.default_rng(6))
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(lab1, lab2)
    assert not np.array_equal(img1, img3)


@pytest.mark.parametrize("dims,n", [(2, 12), (3, 5)])
def test_cases_have_all_classes_touching(dims: int, n: int) -> None:
    shape = (128, 128) if dims == 2 else (64, 64, 64)
    cases = _cases(dims, n)
    present = touching = 0
    for image, label in cases:
        assert image.shape == label.shape == shape
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label.max() <= 2
        present += set(np.unique(label)) == {0, 1, 2}
        touching += _touching(label, 1, 2)
        fg = (label > 0).mean()
        assert (0.03 if dims == 2 else 0.015) < fg < 0.6  # objects visible, background dominant
    assert present >= 0.8 * n
    assert touching >= 0.8 * n


def test_two_class_spec_has_only_cells() -> None:
    spec = SyntheticSpec(num_classes=2)
    _, label = generate_case(spec, np.random.default_rng(0))
    assert set(np.unique(label)) == {0, 1}


def test_bad_specs_are_user_errors() -> None:
    with pytest.raises(LdsegError):
        SyntheticSpec(spatial_dims=4)
    with pytest.raises(LdsegError):
        SyntheticSpec(spatial_dims=3, shape=(64, 64))
    with pytest.raises(LdsegError):
        SyntheticSpec(num_classes=5)


@pytest.mark.parametrize("dims,n", [(2, 12), (3, 5)])
def test_otsu_baseline_fails_on_synthetic_data(dims: int, n: int) -> None:
    """Product requirement: a per-class intensity threshold must not solve the demo data."""
    scores = [best_assignment_dice(otsu_baseline(img, 3), lab, 3) for img, lab in _cases(dims, n)]
    assert float(np.mean(scores)) <= 0.7
    assert float(np.mean(scores)) <= 0.6  # the design aim, with margin in practice


def test_otsu_separates_flat_regions_perfectly() -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((64, 64), np.uint8)
    label[10:30, 10:40] = 1
    label[40:60, 20:50] = 2
    values = np.array([0.5, 0.1, 0.9])  # band order differs from class order
    image = values[label] + rng.normal(0, 0.01, label.shape)
    bands = otsu_baseline(image, 3)
    assert set(np.unique(bands)) == {0, 1, 2}
    assert best_assignment_dice(bands, label, 3) == pytest.approx(1.0)
    assert best_assignment_dice(bands, label, 3, permutations_only=True) == pytest.approx(1.0)


def test_otsu_dynamic_programme_matches_exhaustive_search() -> None:
    rng = np.random.default_rng(1)
    image = np.concatenate([rng.normal(m, s, n) for m, s, n in [(0, 1, 500), (3, .5, 300),
                                                                 (5, 1.5, 400)]])
    bins = 32
    counts, edges = np.histogram(image, bins=bins, range=(image.min(), image.max()))
    centers = 0.5 * (edges[:-1] + edges[1:])
    mu = (counts * centers).sum() / counts.sum()

    def between(t1: int, t2: int) -> float:
        total = 0.0
        for a, b in ((0, t1), (t1, t2), (t2, bins)):
            w = counts[a:b].sum()
            if w:
                total += w * ((counts[a:b] * centers[a:b]).sum() / w - mu) ** 2
        return total

    t1, t2 = max(itertools.combinations(range(1, bins), 2), key=lambda t: between(*t))
    np.testing.assert_allclose(otsu_thresholds(image, 3, bins=bins), edges[[t1, t2]])


def test_best_assignment_dice_scores_a_swap_as_perfect() -> None:
    label = np.array([[0, 1, 2, 2]])
    assert best_assignment_dice(np.array([[2, 0, 1, 1]]), label, 3) == pytest.approx(1.0)
    # one band for everything: best is calling it all class 2 (Dice 2/3 for class 2, 0 for 1)
    assert best_assignment_dice(np.zeros_like(label), label, 3) == pytest.approx(1 / 3)


def test_write_synthetic_dataset_2d(tmp_path) -> None:
    out = write_synthetic_dataset(tmp_path / "ds2", num_train=3, num_test=2, seed=4)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "cell": 1, "capsule": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".png"
    assert meta["channel_names"] == {"0": "synthetic"}
    train = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert train == [f"synth_train_{i:03d}_0000.png" for i in range(3)]
    assert len(list((out / "labelsTr").iterdir())) == 3
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == [
        "synth_test_000.png", "synth_test_001.png"]
    image, geometry = read_image(out / "imagesTr" / "synth_train_000_0000.png")
    label, _ = read_image(out / "labelsTr" / "synth_train_000.png")
    assert image.shape == label.shape == (1, 128, 128) and geometry.spatial_dims == 2
    assert label.max() <= 2 and image.max() > 100
    assert [p.name for p in tmp_path.iterdir()] == ["ds2"]  # no temporary folder left
    # same seed, same data; an existing folder is not overwritten silently
    again = write_synthetic_dataset(tmp_path / "again", num_train=3, num_test=2, seed=4)
    for sub in ("imagesTr/synth_train_002_0000.png", "labelsTs/synth_test_001.png"):
        assert (out / sub).read_bytes() == (again / sub).read_bytes()
    with pytest.raises(LdsegError):
        write_synthetic_dataset(out, num_train=1, num_test=0)
    write_synthetic_dataset(out, num_train=1, num_test=0, overwrite=True)
    assert len(list((out / "imagesTr").iterdir())) == 1


def test_write_synthetic_dataset_3d(tmp_path) -> None:
    out = write_synthetic_dataset(tmp_path / "ds3", spatial_dims=3, num_train=1, num_test=1,
                                  shape=(32, 40, 48))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["file_ending"] == ".nii.gz"
    image, geometry = read_image(out / "imagesTr" / "synth_train_000_0000.nii.gz")
    label, _ = read_image(out / "labelsTs" / "synth_test_000.nii.gz")
    assert image.shape == label.shape == (1, 32, 40, 48)
    assert image.dtype == np.float32 and geometry.spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(label)) <= {0, 1, 2}


def test_moving_sequence_moves() -> None:
    image, label = generate_moving_sequence((64, 64), frames=12, rng=np.random.default_rng(2))
    assert image.shape == label.shape == (12, 64, 64)
    assert set(np.unique(label)) == {0, 1, 2}
    for t in range(12):
        assert _touching(label[t], 1, 2)
    centroids = [np.argwhere(label[t] == 1).mean(axis=0) for t in range(12)]
    steps = [np.linalg.norm(b - a) for a, b in itertools.pairwise(centroids)]
    assert min(steps) > 0.05
    areas = [(label[t] == 1).sum() for t in range(12)]
    assert max(areas) > 1.3 * min(areas)  # it beats, not only drifts
