"""The training losses. LDSeg's single loss is CE + gamma * (1 - Dice) + lambda *
||eps - eps_hat||^2; the baseline U-Net's is the same without the noise term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


class BaselineLoss:
    """CE + gamma (1 - Dice). Dice over all classes, background included (method page);
    computed over the whole batch, which is steadier than per-sample Dice for small
    structures. LDSeg adds its noise term to this, so both models optimise the same
    segmentation goal with the same weights."""

    def __init__(self, gamma: float = 2.0) -> None:
        self.gamma = gamma
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, batch=True)

    def __call__(self, logits: torch.Tensor,
                 label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        target = label.long()
        ce = F.cross_entropy(logits, target)
        dice = self.dice(logits, target[:, None])
        return ce + self.gamma * dice, {"ce": ce.item(), "dice_loss": dice.item()}


class LDSegLoss(BaselineLoss):
    """The segmentation loss on the decoded denoised latent plus lambda times the noise MSE."""

    def __init__(self, gamma: float = 2.0, lam: float = 1.0) -> None:
        super().__init__(gamma)
        self.lam = lam

    def __call__(  # type: ignore[override]
        self, logits: torch.Tensor, label: torch.Tensor, eps: torch.Tensor, eps_hat: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        segmentation, parts = super().__call__(logits, label)
        mse = F.mse_loss(eps_hat, eps)
        return segmentation + self.lam * mse, {**parts, "noise_mse": mse.item()}
