"""Training augmentation: flips move image and label together; acquisition noise looks like
a noisy scan after z-scoring (unit variance, contrast shrinking with the noise)."""

from __future__ import annotations

import numpy as np
import torch

from ldseg.config import TrainConfig
from ldseg.evaluation.robustness import noisy_image, scale_to_unit
from ldseg.training.augment import add_acquisition_noise, augment_batch


def _batch(b: int = 6, shape=(32, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (b, *shape), generator=g, dtype=torch.uint8)
    x = (y.float() - 1)[:, None] + 0.1 * torch.randn((b, 1, *shape), generator=g)
    return x, y


def test_flips_move_image_and_label_together_and_are_seeded():
    x, y = _batch()
    cfg = TrainConfig(flip_axes=(0, 1), intensity_augment=False, noise_augment_std=0.0)
    xa, ya = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    xb, yb = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    flipped = 0
    for i in range(len(x)):  # each sample is one of the four mirror images, the same for both
        options = [(x[i], y[i]), (x[i].flip(1), y[i].flip(0)), (x[i].flip(2), y[i].flip(1)),
                   (x[i].flip(1, 2), y[i].flip(0, 1))]
        match = [k for k, (xo, yo) in enumerate(options)
                 if torch.equal(xa[i], xo) and torch.equal(ya[i], yo)]
        assert match, i
        flipped += match[0] > 0
    assert flipped > 0
    assert torch.equal(x, _batch()[0])  # the input batch is left untouched


def test_acquisition_noise_keeps_unit_variance_and_shrinks_contrast():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((64, 1, 96, 96), generator=g)
    x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)
    out = add_acquisition_noise(x, 2.0, torch.Generator().manual_seed(3))
    var = out.var((1, 2, 3))
    assert torch.allclose(var, torch.ones_like(var), atol=0.07)
    # per sample the signal keeps a share 1 / sqrt(1 + s^2), s drawn from [0, 2] (the
    # generator's first draw)
    s = 2.0 * torch.rand((64, 1, 1, 1), generator=torch.Generator().manual_seed(3)).flatten()
    gain = (out * x).mean((1, 2, 3))
    assert torch.allclose(gain, 1 / torch.sqrt(1 + s**2), atol=0.03)
    assert gain.max() - gain.min() > 0.3  # the strength varies from sample to sample


def test_acquisition_noise_matches_a_noisy_image_after_z_scoring():
    """The same picture as the robustness protocol: noise added to a [0, 1] image, then
    z-scored, is the z-scored clean image at contrast 1 / sqrt(1 + s^2) plus noise."""
    rng = np.random.default_rng(0)
    clean = scale_to_unit(rng.random((1, 64, 64)).astype(np.float32) ** 2)
    noisy = noisy_image(clean, rng.standard_normal(clean.shape, dtype=np.float32), 0.2)
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    zc, zn = z(clean), z(noisy)
    s = float(np.sqrt(1 / np.mean(zc * zn) ** 2 - 1))  # the z-units std this noise amounts to
    assert 0.5 < s < 1.5
    out = add_acquisition_noise(torch.from_numpy(zc)[None], s, torch.Generator().manual_seed(0))
    # the augmented image has the noisy scan's unit variance and at most its contrast
    assert abs(float(out.var()) - 1) < 0.1
    assert float((out[0] * torch.from_numpy(zc)).mean()) >= float(np.mean(zc * zn)) - 0.02


def test_noise_probability_leaves_the_other_samples_clean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((400, 1, 8, 8), generator=g)
    out = add_acquisition_noise(x, 1.0, torch.Generator().manual_seed(5), prob=0.5)
    clean = (out == x).flatten(1).all(1)
    assert 0.4 < clean.float().mean() < 0.6  # about half untouched, bit for bit
    assert not torch.allclose(out[~clean], x[~clean], atol=1e-3)
    # prob 1 draws the same random numbers as before the option existed
    assert torch.equal(add_acquisition_noise(x, 1.0, torch.Generator().manual_seed(5)),
                       add_acquisition_noise(x, 1.0, torch.Generator().manual_seed(5), 1.0))
    assert torch.equal(add_acquisition_noise(x, 1.0, torch.Generator().manual_seed(5), 0.0), x)
