"""Model grid planning, resampling to the grid and mapping probabilities back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldseg.data.preprocessing import (
    choose_grid,
    normalize_intensity,
    pad_values,
    placement_for,
    prepare_case,
    restore_probabilities,
    slice_axis_for,
)
from ldseg.errors import LdsegError


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


def test_border_pad_value_is_the_mean_of_the_edge_per_channel():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 2  # asymmetric
    # the four faces: rows 0 and 3, columns 0 and 4 (corners on two faces count twice)
    faces = [x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]]
    expected = torch.cat([f.transpose(0, 1).reshape(3, -1) for f in faces], 1).mean(1)
    assert torch.allclose(pad_values(x, "border").flatten(), expected)
    assert torch.equal(pad_values(x, "min").flatten(), torch.zeros(3))
    with pytest.raises(LdsegError, match="padding rule"):
        pad_values(x, "max")


# (image shape, slice axis, grid, the image's place on the grid: the rest is padding)
PADDED = [((2, 64, 32), None, (64, 64), (slice(None), slice(16, 48))),
          ((1, 32, 24, 48), None, (32, 48, 48), (slice(None), slice(12, 36), slice(None))),
          ((1, 64, 32, 6), 2, (64, 64), (slice(None), slice(16, 48)))]


@pytest.mark.parametrize("shape,slice_axis,grid,inside", PADDED)
def test_padding_continues_the_border_and_holds_still_under_noise(shape, slice_axis, grid,
                                                                  inside):
    """The grid around a resized image is filled with the mean of the image's edge, per
    channel. Under zero-mean noise that value stays put; the darkest voxel ("min", the rule
    before) falls with the noise and frames the noisy image with a dark band."""
    rng = np.random.default_rng(0)
    clean = np.zeros(shape, np.float32)
    clean[(slice(None),) + tuple(slice(n // 4, 3 * n // 4) for n in shape[1:])] = 1.0
    clean[-1, : shape[1] // 8] += 0.5  # the channels' edges differ
    noisy = clean + 0.3 * rng.standard_normal(shape).astype(np.float32)

    def grid_image(image, pad):
        return prepare_case(image, None, (1.0,) * (len(shape) - 1), grid, keep_aspect=True,
                            clip_percentiles=(0.5, 99.5), num_classes=2,
                            slice_axis=slice_axis, pad=pad).images

    corner = (slice(None), slice(None)) + (0,) * len(grid)  # padding, whatever the case
    for image in (clean, noisy):
        x = grid_image(image, "border")
        image_part = x[(slice(None), slice(None)) + inside]
        value = pad_values(image_part, "border").reshape(1, -1)
        assert torch.allclose(x[corner], value.expand_as(x[corner]), atol=1e-5)
    moved = {pad: float((grid_image(noisy, pad)[corner] - grid_image(clean, pad)[corner])
                        .abs().max()) for pad in ("border", "min")}
    assert moved["border"] < 0.25 and moved["min"] > 1.0, moved


def test_runs_before_the_border_rule_keep_their_padding_bit_for_bit():
    """A run saved with pad_value "min" must see the grid it was trained on."""
    image = np.random.default_rng(0).random((1, 90, 130)).astype(np.float32)
    grid = prepare_case(image, None, (1.0, 1.0), (64, 96), keep_aspect=True,
                        clip_percentiles=(0.5, 99.5), num_classes=2, pad="min").images[0]
    x = torch.from_numpy(normalize_intensity(image, (0.5, 99.5)))[None]
    x = torch.nn.functional.interpolate(x, size=(64, 92), mode="area")  # placed at offset 2
    assert torch.equal(grid, torch.nn.functional.pad(x, [2, 2, 0, 0], value=float(x.amin()))[0])
