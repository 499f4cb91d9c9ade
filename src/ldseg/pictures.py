"""Pictures people look at: training curves and image | segmentation | uncertainty panels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldseg.files import atomic_write  # noqa: E402

# Okabe-Ito: distinguishable for colour-blind readers.
CLASS_COLOURS = np.array([
    [0, 0, 0], [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66],
    [0, 114, 178], [213, 94, 0], [204, 121, 167],
], dtype=np.float32) / 255.0
# Error maps, also Okabe-Ito: vermillion and blue are the pair that stays distinct in every
# common colour-vision deficiency; yellow marks structure given the wrong foreground class.
ERROR_COLOURS = {
    "false positive": np.array([213, 94, 0], np.float32) / 255.0,
    "false negative": np.array([0, 114, 178], np.float32) / 255.0,
    "wrong class": np.array([240, 228, 66], np.float32) / 255.0,
}


def _save(fig, path: Path) -> None:
    try:
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_training_curves(history: list[dict], path: Path) -> None:
    _save(training_curves_figure(history), path)


def training_curves_figure(history: list[dict]):
    """Loss terms and validation Dice per epoch (rows of log.csv); the caller closes it."""
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "ce", "dice_loss", "noise_mse"):
        vals = [r.get(key) for r in history]
        if any(v is not None for v in vals):
            ax1.plot(epochs, [np.nan if v is None else v for v in vals], label=key)
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.set_title("training loss")
    ax1.legend(fontsize=8)
    val_keys = sorted({k for r in history for k in r if k.startswith("val_dice")})
    for key in val_keys:
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if pts:
            name = "mean foreground" if key == "val_dice" else key.replace("val_dice_", "")
            ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation Dice (sampled)")
    if val_keys:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation cases", ha="center", transform=ax2.transAxes)
    return fig


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> displayable (H, W) or (H, W, 3) in [0, 1], windowed at percentiles."""
    img = image[:3].astype(np.float32) if image.shape[0] >= 3 else image[0].astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    img = np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.moveaxis(img, 0, -1) if img.ndim == 3 else img


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    base = _display(image)
    rgb = np.repeat(base[..., None], 3, -1) if base.ndim == 2 else base
    colours = CLASS_COLOURS[labels % len(CLASS_COLOURS)]
    mask = (labels > 0)[..., None]
    return np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)


def save_case_panel(
    path: Path, image: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray | None,
    reference: np.ndarray | None = None, class_names: tuple[str, ...] = (), title: str = "",
) -> None:
    """Image | segmentation overlay | (reference overlay) | uncertainty, for a 2D case or the
    middle slice (along the first axis) of a 3D one. image: (C, *spatial)."""
    if labels.ndim == 3:
        fg = np.argwhere(labels > 0)
        z = int(np.median(fg[:, 0])) if len(fg) else labels.shape[0] // 2
        image, labels = image[:, z], labels[z]
        uncertainty = None if uncertainty is None else uncertainty[z]
        reference = None if reference is None else reference[z]
    panels = [("image", _display(image), "gray"), ("segmentation", overlay(image, labels), None)]
    if reference is not None:
        panels.append(("reference", overlay(image, reference), None))
    if uncertainty is not None:
        panels.append(("uncertainty (entropy)", uncertainty, "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6))
    for ax, (name, data, cmap) in zip(np.atleast_1d(axes), panels, strict=True):
        im = ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if name.startswith("uncertainty"):
            fig.colorbar(im, ax=ax, fraction=0.046)
    if class_names:
        handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[i % len(CLASS_COLOURS)])
                   for i in range(1, len(class_names))]
        fig.legend(handles, class_names[1:], loc="lower center", ncol=len(handles), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
