"""The single LDSeg loss: CE + gamma * (1 - Dice) + lambda * ||eps - eps_hat||^2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


class LDSegLoss:
    """Dice over all classes, background included (method page); computed over the whole
    batch, which is steadier than per-sample Dice for small structures."""

    def __init__(self, gamma: float = 2.0, lam: float = 1.0) -> None:
        self.gamma, self.lam = gamma, lam
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True)

    def __call__(
        self, logits: torch.Tensor, label: torch.Tensor, eps: torch.Tensor, eps_hat: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        target = label.long()
        ce = F.cross_entropy(logits, target)
        dice = self.dice(logits, target[:, None])
        mse = F.mse_loss(eps_hat, eps)
        total = ce + self.gamma * dice + self.lam * mse
        parts = {"ce": ce.item(), "dice_loss": dice.item(), "noise_mse": mse.item()}
        return total, parts
