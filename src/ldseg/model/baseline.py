"""The deterministic baseline: a standard MONAI U-Net with a Dice + CE loss.

It goes through LDSeg's own pipeline (planning, preprocessing, augmentation, EMA, checkpoints,
validation, prediction), so that a comparison differs only in the model: same data, same grid,
same budget. Its prediction is one softmax; its uncertainty is that softmax's entropy.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from ldseg.config import ModelConfig
from ldseg.model.networks import LDSeg


class BaselineUNet(nn.Module):
    """MONAI's UNet: two residual units per level, 3x3(x3) kernels, a 2x stride per level.

    MONAI's UNet rather than DynUNet: DynUNet registers its blocks twice, so its state dict
    holds aliased tensors that safetensors refuses to save. Instance norm (nnU-Net's choice,
    no running statistics) for `norm="group"`: the last up-convolution is normalised over the
    K class channels, which a fixed group count does not divide; `norm="batch"` gives BatchNorm.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        widths = cfg.baseline_widths
        norm = ("instance", {"affine": True}) if cfg.norm == "group" else "batch"
        self.unet = UNet(
            cfg.spatial_dims, cfg.in_channels, cfg.num_classes, channels=widths,
            strides=[2] * (len(widths) - 1), num_res_units=2, norm=norm, dropout=cfg.dropout,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *grid) normalised images -> (B, K, *grid) class logits."""
        return self.unet(images)

    def parameter_counts(self) -> dict[str, int]:
        return {"unet": sum(p.numel() for p in self.parameters())}


def build_model(cfg: ModelConfig) -> LDSeg | BaselineUNet:
    """The network the config names: LDSeg's four modules or the baseline U-Net."""
    return BaselineUNet(cfg) if cfg.architecture == "baseline" else LDSeg(cfg)

