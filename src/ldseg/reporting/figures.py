"""The report's pictures as RGB arrays and encoded bytes.

Windowed images, class overlays, error maps, uncertainty heat maps, latents, the planes of a
volume and curves. Colours are Okabe-Ito (`ldseg.pictures`), heat maps use magma and latents
PuOr: all readable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ldseg.pictures import CLASS_COLOURS, ERROR_COLOURS, plt, training_curves_figure

CT_WINDOW = (-160.0, 240.0)  # Hounsfield units: level 40, width 400, the soft-tissue window
LATENT_RANGE = 3.0  # latents are standardised: +-3 covers nearly all values


def is_ct(channel_names: tuple[str, ...] | list[str]) -> bool:
    return bool(channel_names) and channel_names[0].strip().upper() == "CT"


def window(image: np.ndarray, channel_names: tuple[str, ...] | list[str] = ()) -> np.ndarray:
    """(C, *spatial) -> intensities in [0, 1]: (*spatial), or (*spatial, 3) for a 2D colour
    image. CT (the first channel named 'CT') gets a fixed soft-tissue window, so that HU mean
    the same in every case; anything else the 0.5/99.5 percentiles of the whole image (not
    per slice: a slider must not change the contrast). 8-bit colour is shown as stored."""
    if image.shape[0] == 3 and image.ndim == 3:
        img = image.astype(np.float32)
        if img.min() >= 0 and 1 < img.max() <= 255:
            lo, hi = 0.0, 255.0
        else:
            lo, hi = np.percentile(img, (0.5, 99.5))
        return np.moveaxis(np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1), 0, -1)
    img = image[0].astype(np.float32)
    lo, hi = CT_WINDOW if is_ct(channel_names) else np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(float(hi - lo), 1e-8), 0, 1)


def _rgb(display: np.ndarray) -> np.ndarray:
    return display if display.ndim == 3 else np.repeat(display[..., None], 3, -1)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another label: the outline of each structure."""
    edge = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        differs = np.diff(labels, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        edge[tuple(lead)] |= differs
        lead[axis] = slice(None, -1)
        edge[tuple(lead)] |= differs
    return edge & (labels > 0)


def overlay_layer(labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """(h, w, 4) uint8 to lay over the image: class colours filled translucent with an opaque
    outline (the fill shows the class, the outline where the boundary runs)."""
    layer = np.zeros((*labels.shape, 4), np.float32)
    layer[..., :3] = CLASS_COLOURS[labels % len(CLASS_COLOURS)]
    layer[..., 3] = np.where(_edges(labels), 1.0, np.where(labels > 0, alpha, 0.0))
    return _to_uint8(layer)


def error_layer(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8: the image dimmed, false positives, false negatives and wrong-class
    voxels opaque on top."""
    layer = np.zeros((*prediction.shape, 4), np.float32)
    layer[..., 3] = 0.55
    masks = {
        "false positive": (prediction > 0) & (reference == 0),
        "false negative": (prediction == 0) & (reference > 0),
        "wrong class": (prediction > 0) & (reference > 0) & (prediction != reference),
    }
    for name, mask in masks.items():
        layer[mask] = (*ERROR_COLOURS[name], 1.0)
    return _to_uint8(layer)


def flatten(base: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """An (h, w, 4) layer over an (h, w, 3) uint8 picture -> (h, w, 3) uint8."""
    a = layer[..., 3:].astype(np.float32) / 255
    out = base.astype(np.float32) * (1 - a) + layer[..., :3].astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay(display: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class colours over the windowed image, as one (h, w, 3) uint8 picture."""
    return flatten(_to_uint8(_rgb(display)), overlay_layer(labels))


def heat(values: np.ndarray, vmax: float, cmap: str = "magma", vmin: float = 0.0) -> np.ndarray:
    """Values -> RGB on a fixed scale (vmin..vmax), so that pictures compare across cases."""
    scaled = (values.astype(np.float32) - vmin) / max(vmax - vmin, 1e-8)
    return _to_uint8(colormaps[cmap](np.clip(scaled, 0, 1))[..., :3])


def latent_picture(latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(c, h, w) latent -> its channels tiled in a near-square grid, PuOr on +-3, about `size`."""
    c = latent.shape[0]
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    tile = (max(1, size[0] // rows), max(1, size[1] // cols))
    canvas = np.full((rows * (tile[0] + 1) - 1, cols * (tile[1] + 1) - 1, 3), 255, np.uint8)
    for i in range(c):
        r, q = divmod(i, cols)
        pic = resize(heat(latent[i], LATENT_RANGE, "PuOr", -LATENT_RANGE), tile)
        canvas[r * (tile[0] + 1):r * (tile[0] + 1) + tile[0],
               q * (tile[1] + 1):q * (tile[1] + 1) + tile[1]] = pic
    return canvas


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> `size`: nearest when enlarging (voxels stay visible), smoothed when
    shrinking."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    grow = size[0] >= rgb.shape[0] and size[1] >= rgb.shape[1]
    method = Image.Resampling.NEAREST if grow else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), method))


def _resize_values(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) or (h, w, 3) floats -> `size`, as `resize` does."""
    if values.shape[:2] == tuple(size):
        return values
    grow = size[0] >= values.shape[0] and size[1] >= values.shape[1]
    method = Image.Resampling.NEAREST if grow else Image.Resampling.BILINEAR
    planes = values[..., None] if values.ndim == 2 else values
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], np.float32), "F")
                      .resize((size[1], size[0]), method)) for c in range(planes.shape[-1])]
    return np.stack(out, -1) if values.ndim == 3 else out[0]


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour: a label map keeps its values."""
    if labels.shape == tuple(size):
        return labels
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(int),
                      labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(int),
                      labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def display_size(shape: tuple[int, ...], spacing: tuple[float, ...], max_side: int) -> tuple:
    """Pixel size of a 2D picture in its physical aspect, the longer side at most `max_side`."""
    smallest = min(spacing)
    h, w = (n * s / smallest for n, s in zip(shape, spacing, strict=True))
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice `index` across array `axis` of a 3D volume ((z, y, x) or (z, y, x, 3)); array
    axis 0 points up in the planes that contain it (superior up for ITK's LPS / RAS images)."""
    cut = np.take(volume, index, axis=axis)
    return cut[::-1] if axis != 0 else cut


def centre_of(mask: np.ndarray) -> tuple[int, ...]:
    """Centre of mass of a mask (the structure's centre), or the array centre when empty."""
    points = np.argwhere(mask)
    if not len(points):
        return tuple(n // 2 for n in mask.shape)
    return tuple(int(round(v)) for v in points.mean(0))


def slice_positions(mask: np.ndarray, axis: int, centre: int, max_slices: int) -> list[int]:
    """Slices for a slider across `axis`: over the structure's extent plus a margin of a tenth
    of the axis, evenly spaced, at most `max_slices`, always including `centre`."""
    n = mask.shape[axis]
    hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    lo, hi = (int(hits[0]), int(hits[-1])) if len(hits) else (0, n - 1)
    margin = max(1, n // 10)
    lo, hi = max(0, lo - margin), min(n - 1, hi + margin)
    picked = np.unique(np.rint(np.linspace(lo, hi, min(max_slices, hi - lo + 1))).astype(int))
    return sorted(set(picked.tolist()) | {int(centre)})


@dataclass
class CaseVolumes:
    """One case's arrays on its own grid, ready to be cut into pictures."""

    display: np.ndarray  # (*spatial) or (*spatial, 3) in [0, 1], see `window`
    prediction: np.ndarray  # (*spatial) integer labels
    reference: np.ndarray | None
    uncertainty: np.ndarray | None  # (*spatial) entropy in nats
    spacing: tuple[float, ...]
    uncertainty_max: float  # ln K: the entropy of K equally likely classes

    @property
    def foreground(self) -> np.ndarray:
        mask = self.prediction > 0
        return mask | (self.reference > 0) if self.reference is not None else mask


def case_layers(case: CaseVolumes, axis: int | None = None, index: int = 0,
                max_side: int = 256) -> dict[str, np.ndarray]:
    """The pictures of a 2D case (`axis` None) or of one plane of a 3D case, in the physical
    aspect: 'image' and 'uncertainty' as (h, w, 3), 'prediction', 'reference' and 'error' as
    (h, w, 4) layers over the image (labels stay crisp, and are tiny as PNG). Panels without
    data are left out; 'grey' is the error map's background for a colour image. Arrays are
    resized before drawing, so outlines are one pixel wide."""
    if axis is None:
        cut, spacing = (lambda v: v), case.spacing
    else:
        cut = (lambda v: plane(v, axis, index))  # noqa: E731
        spacing = tuple(s for a, s in enumerate(case.spacing) if a != axis)
    prediction = cut(case.prediction)
    size = display_size(prediction.shape, spacing, max_side)
    display = _resize_values(cut(case.display), size)
    prediction = _resize_labels(prediction, size)
    layers = {"image": _to_uint8(_rgb(display)), "prediction": overlay_layer(prediction)}
    if case.reference is not None:
        reference = _resize_labels(cut(case.reference), size)
        layers["reference"] = overlay_layer(reference)
        layers["error"] = error_layer(prediction, reference)
        if display.ndim == 3:  # colour: errors over grey, so that no colour competes
            grey = display @ np.array([0.299, 0.587, 0.114], np.float32)
            layers["grey"] = _to_uint8(_rgb(grey))
    if case.uncertainty is not None:
        layers["uncertainty"] = heat(_resize_values(cut(case.uncertainty), size),
                                     case.uncertainty_max)
    return layers


def case_panels(case: CaseVolumes, axis: int | None = None, index: int = 0,
                max_side: int = 256) -> dict[str, np.ndarray]:
    """`case_layers` flattened: every panel one (h, w, 3) picture (for PNG files)."""
    layers = case_layers(case, axis, index, max_side)
    grey = layers.pop("grey", layers["image"])
    return {name: flatten(grey if name == "error" else layers["image"], pic)
            if pic.shape[-1] == 4 else pic for name, pic in layers.items()}


def encode(picture: np.ndarray, fmt: str = "png", quality: int = 85) -> bytes:
    """PNG (lossless; a layer of few colours becomes a small palette PNG) or JPEG (a fraction
    of the size for photographs and MRI)."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(picture[..., :3]).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    image = Image.fromarray(picture)
    if picture.shape[-1] == 4:
        packed = np.ascontiguousarray(picture).view(np.uint32)[..., 0]  # one int a colour
        colours, index = np.unique(packed, return_inverse=True)
        if len(colours) <= 256:
            image = Image.fromarray(index.reshape(picture.shape[:2]).astype(np.uint8), "P")
            image.putpalette(colours.view(np.uint8).tolist(), rawmode="RGBA")
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def training_curves_png(history: list[dict]) -> bytes:
    return _figure_png(training_curves_figure(history))


def robustness_png(rows: list[dict]) -> bytes:
    """Dice against the standard deviation of the noise added to the image, one line a model."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        pts = sorted((r["sigma"], r["dice"]) for r in rows if r["model"] == model)
        colour = CLASS_COLOURS[1 + i % (len(CLASS_COLOURS) - 1)]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=4, color=colour, label=model)
    ax.set_xlabel("noise standard deviation (sigma)")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("noise robustness")
    return _figure_png(fig)


def strip(pictures: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Rows of pictures (each row one height) -> one picture on white, for the PNG export."""
    rows = []
    for row in pictures:
        h = max(p.shape[0] for p in row)
        padded = [np.pad(p, ((0, h - p.shape[0]), (0, gap), (0, 0)), constant_values=255)
                  for p in row]
        rows.append(np.concatenate(padded, 1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)),
                                  constant_values=255) for r in rows], 0)
