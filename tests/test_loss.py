"""The training losses: CE + gamma (1 - Dice) [+ lambda MSE], with the weights they are given."""

from __future__ import annotations

import pytest
import torch

from ldseg.training.loss import BaselineLoss, LDSegLoss


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, 3, 8, 8), generator=g)
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    eps, eps_hat = torch.randn((2, 4, 2, 2), generator=g), torch.randn((2, 4, 2, 2), generator=g)
    return logits, label, eps, eps_hat


def _hand_dice_loss(logits: torch.Tensor, label: torch.Tensor) -> float:
    """1 - mean over classes of the batch-wide soft Dice, background included."""
    p = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(label, p.shape[1]).movedim(-1, 1).float()
    dims = (0, 2, 3)
    dice = (2 * (p * onehot).sum(dims) + 1e-5) / (p.sum(dims) + onehot.sum(dims) + 1e-5)
    return float(1 - dice.mean())


@pytest.mark.parametrize("gamma,lam", [(2.0, 1.0), (0.5, 1.0), (0.0, 3.0)])
def test_ldseg_loss_weighs_its_three_terms_as_given(gamma, lam):
    logits, label, eps, eps_hat = _batch()
    total, parts = LDSegLoss(gamma, lam)(logits, label, eps, eps_hat)
    ce = float(torch.nn.functional.cross_entropy(logits, label))
    mse = float(((eps - eps_hat) ** 2).mean())
    dice = _hand_dice_loss(logits, label)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["noise_mse"] == pytest.approx(mse, rel=1e-5)
    assert parts["dice_loss"] == pytest.approx(dice, rel=1e-4)
    assert float(total) == pytest.approx(ce + gamma * dice + lam * mse, rel=1e-4)


def test_baseline_loss_is_the_same_without_the_noise_term():
    logits, label, eps, eps_hat = _batch(1)
    total, parts = BaselineLoss(1.5)(logits, label)
    ldseg_total, _ = LDSegLoss(1.5, 0.0)(logits, label, eps, eps_hat)
    assert float(total) == pytest.approx(float(ldseg_total), rel=1e-6)
    assert set(parts) == {"ce", "dice_loss"}


def test_a_confident_correct_prediction_costs_almost_nothing():
    _, label, eps, _ = _batch(2)
    logits = 50.0 * torch.nn.functional.one_hot(label, 3).movedim(-1, 1).float()
    total, parts = LDSegLoss()(logits, label, eps, eps.clone())
    assert float(total) < 1e-4 and parts["dice_loss"] < 1e-4
