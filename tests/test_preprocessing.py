"""Model grid planning, resampling to the grid and mapping probabilities back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldseg.data.preprocessing import (
    choose_grid,
    normalize_intensity,
    placement_for,
    prepare_case,
    restore_probabilities,
    slice_axis_for,
)


def test_grid_axes_are_multiples_and_respect_the_voxel_budget():
    grid = choose_grid([(522, 775), (453, 589)], [(1, 1), (1, 1)], 256 * 256, 16)
    assert all(g % 16 == 0 for g in grid)
    assert np.prod(grid) <= 1.25 * 256 * 256
    assert grid[1] > grid[0]  # keeps the landscape orientation
    # Small images are not upsampled beyond their own resolution.
    assert choose_grid([(104, 160)], [(1, 1)], 256 * 256, 16) == (112, 160)
    grid3 = choose_grid([(160, 104, 240)], [(1, 1, 1)], 48 * 48 * 64, 8)
    assert all(g % 8 == 0 for g in grid3) and np.prod(grid3) <= 1.25 * 48 * 48 * 64


def test_anisotropic_spacing_changes_the_grid_shape():
    grid = choose_grid([(40, 200, 200)], [(5.0, 1.0, 1.0)], 64 * 64 * 64, 16)
    assert grid[0] == pytest.approx(grid[1], abs=16)  # 40 x 5 mm ~ 200 x 1 mm


def test_placement_keeps_aspect_by_padding():
    p = placement_for((100, 200), (1.0, 1.0), (64, 64), keep_aspect=True)
    assert p.resized_shape == (32, 64) and p.offset == (16, 0)
    p = placement_for((100, 200), (1.0, 1.0), (64, 64), keep_aspect=False)
    assert p.resized_shape == (64, 64)


def test_normalization_is_per_channel_and_clips_outliers():
    rng = np.random.default_rng(0)
    img = np.stack([rng.normal(100, 10, (64, 64)), rng.normal(-5, 0.1, (64, 64))]).astype("f4")
    img[0, 0, 0] = 1e6
    out = normalize_intensity(img, (0.5, 99.5))
    assert out.dtype == np.float32
    for c in range(2):
        assert abs(out[c].mean()) < 1e-4 and out[c].std() == pytest.approx(1, abs=1e-3)
    assert out[0].max() < 5


def test_round_trip_of_a_label_through_the_grid_is_nearly_lossless():
    label = np.zeros((90, 130), dtype=np.int64)
    label[20:60, 30:80] = 1
    label[50:80, 70:120] = 2
    image = label[None].astype(np.float32) + 0.1
    prep = prepare_case(image, label, (1.0, 1.0), (64, 96), keep_aspect=True,
                        clip_percentiles=(0, 100), num_classes=3)
    assert prep.images.shape == (1, 1, 64, 96) and prep.labels.shape == (1, 64, 96)
    onehot = torch.nn.functional.one_hot(prep.labels.long(), 3).movedim(-1, 1).float()
    back = restore_probabilities(onehot, prep).argmax(0).numpy()
    assert back.shape == label.shape
    assert (back == label).mean() > 0.97


def test_slicing_a_volume_for_a_2d_model_and_reassembling_it():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(1, 20, 30, 12)).astype("f4")
    label = (vol[0] > 0).astype(np.int64)
    axis = slice_axis_for((1.0, 1.0, 3.0), -1)
    assert axis == 2
    prep = prepare_case(vol, label, (1.0, 1.0, 3.0), (32, 32), keep_aspect=False,
                        clip_percentiles=(0, 100), num_classes=2, slice_axis=axis)
    assert prep.images.shape == (12, 1, 32, 32) and prep.labels.shape == (12, 32, 32)
    onehot = torch.nn.functional.one_hot(prep.labels.long(), 2).movedim(-1, 1).float()
    back = restore_probabilities(onehot, prep)
    assert back.shape == (2, 20, 30, 12)
    # Slice k of the reassembled volume comes from slice k of the input.
    assert (back.argmax(0).numpy()[:, :, 5] == label[:, :, 5]).mean() > 0.8
