"""Synthetic 2D/3D multi-class scenes: the built-in data for `ldseg demo`.

The demo has to show that the model learns *structure*, so the scenes are built to defeat an
intensity threshold while staying easy for a small CNN:

* every class has about the same mean intensity (a per-image offset of a few percent), so
  class identity lives in the texture: background is mottled (low-frequency), class 1 ("cell")
  is grainy speckle, class 2 ("capsule") is fine stripes;
* a strong, smooth multiplicative bias field moves intensities across the image by far more
  than the class offsets, plus Gaussian noise and a slight blur;
* objects are smooth deformed ellipses/ellipsoids and class-2 objects touch class-1 objects
  (a partial shell wrapping a cell, or a blob pressed against it), separated by a thin dark
  boundary line, so boundaries are visible locally.

The image is rendered *from* the final label map, so labels are exactly what is drawn. One
implementation serves 2D and 3D (`spatial_dims`); `generate_moving_sequence` gives a 2D+t
"beating chamber" that is segmented as a 3D volume.

`otsu_baseline` and `best_assignment_dice` measure the threshold baseline that the data must
defeat (mean foreground Dice <= 0.7 is a product requirement).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldseg.data.dataset import write_dataset_json
from ldseg.data.imageio import Geometry, write_image
from ldseg.errors import LdsegError

DEFAULT_SHAPES = {2: (128, 128), 3: (64, 64, 64)}
DEFAULT_CLASS_NAMES = ("background", "cell", "capsule")


@dataclass
class SyntheticSpec:
    """Knobs of the scene generator; the defaults are what the demo uses.

    Lengths ending in `_frac` are fractions of the smallest image side, so the layout scales
    with the image; texture scales are in voxels, so textures stay resolvable at any size.
    """

    spatial_dims: int = 2
    shape: tuple[int, ...] | None = None  # None: (128, 128) in 2D, (64, 64, 64) in 3D
    num_classes: int = 3  # background + "cell" (+ "capsule"); 2 or 3
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    # layout
    min_groups: int = 1  # a group is a cell with a capsule wrapped around or pressed against it
    max_groups: int = 2
    extra_blob_prob: float = 0.4  # chance of one more free-standing cell or capsule
    # sizes; None: per-dimension defaults (3D objects are relatively larger, so that they
    # still span a few cells of the model's 1/16 latent grid and fill a fair share of a volume)
    core_radius_frac: tuple[float, float] | None = None  # 2D 0.16..0.26: 20..33 px in 128
    shell_thickness_frac: tuple[float, float] | None = None
    blob_radius_frac: tuple[float, float] | None = None
    wrap_prob: float = 0.4  # capsule as a partial shell (else as a blob pressed against the cell)
    deformation: float = 0.05  # amplitude of the smooth radial deformation
    # appearance
    base_intensity: tuple[float, float] = (0.42, 0.55)
    class_offset: float = 0.05  # per-image class mean offsets drawn in +-this
    background_texture: float = 0.08
    speckle_strength: float = 0.30
    stripe_strength: float = 0.25
    stripe_period: tuple[float, float] = (3.5, 5.5)  # voxels
    rim_strength: tuple[float, float] = (0.15, 0.25)
    bias_strength: float = 0.45  # max relative gain change across the image
    blur_sigma: float = 0.6
    noise_std: float = 0.03
    spacing: tuple[float, ...] | None = None  # None: 1.0 per axis

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise LdsegError(f"synthetic data is 2D or 3D, not {self.spatial_dims}D")
        if self.shape is None:
            self.shape = DEFAULT_SHAPES[self.spatial_dims]
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != self.spatial_dims:
            raise LdsegError(f"shape {self.shape} does not have {self.spatial_dims} axes")
        if min(self.shape) < 32:
            raise LdsegError(f"synthetic images need every side >= 32, got {self.shape}")
        if self.num_classes not in (2, 3):
            raise LdsegError(f"synthetic data has 2 or 3 classes, not {self.num_classes}")
        if len(self.class_names) < self.num_classes:
            raise LdsegError(f"need {self.num_classes} class names, got {self.class_names}")
        if self.spacing is None:
            self.spacing = (1.0,) * self.spatial_dims
        sizes = _DEFAULT_SIZES[self.spatial_dims]
        if self.core_radius_frac is None:
            self.core_radius_frac = sizes["core"]
        if self.shell_thickness_frac is None:
            self.shell_thickness_frac = sizes["shell"]
        if self.blob_radius_frac is None:
            self.blob_radius_frac = sizes["blob"]


_DEFAULT_SIZES = {
    2: {"core": (0.16, 0.26), "shell": (0.09, 0.14), "blob": (0.14, 0.22)},
    3: {"core": (0.15, 0.24), "shell": (0.07, 0.10), "blob": (0.12, 0.18)},
}


# ----------------------------------------------------------------------------- random fields


def _gaussian_filter(x: np.ndarray, sigma: float, periodic: bool = False) -> np.ndarray:
    """Gaussian blur by FFT (no scipy at runtime): reflect-padded for images, periodic for
    white noise, where wrap-around is harmless and padding by 3 sigma would be costly."""
    if sigma <= 0:
        return x.astype(np.float32)
    pad = 0 if periodic else int(np.ceil(3 * sigma))
    xp = np.pad(x, pad, mode="reflect") if pad < min(x.shape) else np.pad(x, pad, mode="wrap")
    freqs = np.meshgrid(
        *[np.fft.fftfreq(n) for n in xp.shape[:-1]], np.fft.rfftfreq(xp.shape[-1]), indexing="ij"
    )
    f2 = sum(f * f for f in freqs)
    out = np.fft.irfftn(np.fft.rfftn(xp) * np.exp(-2.0 * np.pi**2 * sigma**2 * f2),
                          s=xp.shape, axes=list(range(xp.ndim)))
    crop = tuple(slice(pad, pad + n) for n in x.shape)
    return out[crop].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian random field with correlation length `sigma`, zero mean, unit std."""
    f = _gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, periodic=True)
    f -= f.mean()
    return f / max(float(f.std()), 1e-8)


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")


def _random_rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.sign(np.diag(r))


def _unit_vector(rng: np.random.Generator, dims: int) -> np.ndarray:
    v = rng.standard_normal(dims)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------- shapes


@dataclass
class _Blob:
    """A deformed ellipse/ellipsoid: inside where |y| < 1 + delta(y/|y|), y = R^T(x-c)/radii.

    The deformation depends only on the direction, so the blob stays star-shaped and smooth.
    """

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    waves: list[tuple[np.ndarray, float, float, float]] = field(default_factory=list)

    @classmethod
    def random(
        cls, rng: np.random.Generator, center: np.ndarray, radius: float, deformation: float
    ) -> _Blob:
        dims = len(center)
        radii = radius * rng.uniform(0.75, 1.25, dims)
        radii *= radius / np.exp(np.log(radii).mean())  # keep the geometric-mean radius
        waves = [
            (_unit_vector(rng, dims), rng.uniform(1.5, 3.5), rng.uniform(0, 2 * np.pi),
             deformation * rng.uniform(0.4, 1.0))
            for _ in range(3)
        ]
        return cls(np.asarray(center, float), radii, _random_rotation(rng, dims), waves)

    @property
    def extent(self) -> float:
        """A radius that safely bounds the blob (deformation included)."""
        return float(self.radii.max()) * (1.0 + sum(w[3] for w in self.waves))

    def coords(self, grid: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Normalised radius |y|, its deformed boundary 1 + delta, and the unit direction."""
        diff = [g - c for g, c in zip(grid, self.center, strict=True)]
        dims = len(grid)
        y = [sum(self.rotation[i, j] * diff[i] for i in range(dims)) / self.radii[j]
             for j in range(dims)]
        r = np.sqrt(sum(v * v for v in y))
        u = [v / np.maximum(r, 1e-6) for v in y]
        boundary = np.ones_like(r)
        for w, freq, phase, amp in self.waves:
            boundary += amp * np.cos(freq * sum(wi * ui for wi, ui in zip(w, u, strict=True))
                                     + phase)
        return r, boundary, u

    def mask(self, grid: list[np.ndarray], scale: float = 1.0) -> np.ndarray:
        r, boundary, _ = self.coords(grid)
        return r < boundary * scale


def _place(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    extent: float,
    placed: list[tuple[np.ndarray, float]],
    tries: int = 60,
) -> np.ndarray | None:
    """A centre keeping a disc of radius `extent` inside the image and (mostly) clear of the
    objects already placed; None if there is no room."""
    lo = np.full(len(shape), extent + 1.0)
    hi = np.asarray(shape, float) - extent - 1.0
    if np.any(hi <= lo):
        return None
    for _ in range(tries):
        c = rng.uniform(lo, hi)
        if all(np.linalg.norm(c - pc) > 0.9 * (extent + pe) for pc, pe in placed):
            return c
    return None


@dataclass
class _Group:
    """A cell, built around the origin, with its capsule: a partial shell or a pressed blob."""

    core: _Blob
    kind: str  # "none", "shell" or "blob"
    shell_scale: float = 1.0
    partner: _Blob | None = None  # for "blob": centred relative to the core's centre
    extent: float = 0.0


def _make_group(
    spec: SyntheticSpec, rng: np.random.Generator, side: float, scale: float
) -> _Group:
    assert spec.core_radius_frac and spec.shell_thickness_frac and spec.blob_radius_frac
    dims = spec.spatial_dims
    radius = side * scale * rng.uniform(*spec.core_radius_frac)
    core = _Blob.random(rng, np.zeros(dims), radius, spec.deformation)
    if spec.num_classes < 3:
        return _Group(core, "none", extent=core.extent)
    if rng.random() < spec.wrap_prob:
        thickness = side * scale * rng.uniform(*spec.shell_thickness_frac)
        shell_scale = 1.0 + thickness / radius
        return _Group(core, "shell", shell_scale=shell_scale, extent=core.extent * shell_scale)
    blob_r = side * scale * rng.uniform(*spec.blob_radius_frac)
    d = _unit_vector(rng, dims)
    along = 1.0 / np.linalg.norm((core.rotation.T @ d) / core.radii)  # core radius along d
    # overlapping the cell (which wins the overlap), so the two always touch
    partner = _Blob.random(rng, d * (along + 0.55 * blob_r), blob_r, spec.deformation)
    extent = max(core.extent, float(np.linalg.norm(partner.center)) + partner.extent)
    return _Group(core, "blob", partner=partner, extent=extent)


def _layout(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """The label map: groups of a cell (1) with a touching capsule (2), plus maybe one more.

    Groups are placed (mostly) clear of each other; a later group that finds no room is left
    out, the first one is redrawn smaller, so every scene keeps a cell and (3 classes) a capsule.
    """
    shape = spec.shape
    assert shape is not None and spec.blob_radius_frac is not None
    side = float(min(shape))
    grid = _grid(shape)
    label = np.zeros(shape, np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    n_groups = int(rng.integers(spec.min_groups, spec.max_groups + 1))
    for g in range(n_groups):
        # later groups a bit smaller, so they fit; only the first one is shrunk further when
        # it does not fit (tiny objects would vanish on the model's coarse latent grid)
        scale = 0.85 if g > 0 else 1.0
        for _ in range(3 if g == 0 else 1):
            group = _make_group(spec, rng, side, scale)
            center = _place(rng, shape, group.extent, placed)
            if center is not None:
                break
            scale *= 0.85
        else:
            continue
        placed.append((center, group.extent))
        core = group.core
        core.center = center
        core_mask = core.mask(grid)
        if group.kind == "shell":
            # a capsule covering 150..330 degrees of the cell's outline
            r, boundary, u = core.coords(grid)
            n = _unit_vector(rng, len(shape))
            cos_half = np.cos(np.deg2rad(rng.uniform(75, 165)))
            facing = sum(ni * ui for ni, ui in zip(n, u, strict=True)) > cos_half
            shell = (r < boundary * group.shell_scale) & facing & ~core_mask
            label[shell & (label == 0)] = 2
        elif group.kind == "blob" and group.partner is not None:
            group.partner.center = group.partner.center + center
            label[group.partner.mask(grid) & ~core_mask & (label == 0)] = 2
        label[core_mask] = 1
    # one more free-standing object of either class
    if rng.random() < spec.extra_blob_prob or not np.any(label):
        radius = side * rng.uniform(*spec.blob_radius_frac)
        blob = _Blob.random(rng, np.zeros(len(shape)), radius, spec.deformation)
        center = _place(rng, shape, blob.extent, placed)
        if center is not None:
            blob.center = center
            cls = 1 if spec.num_classes < 3 else int(rng.integers(1, 3))
            label[blob.mask(grid) & (label == 0)] = cls
    return label


def _boundaries(label: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour of another label (both sides of every interface)."""
    edge = np.zeros(label.shape, bool)
    for axis in range(label.ndim):
        a = [slice(None)] * label.ndim
        b = [slice(None)] * label.ndim
        a[axis] = slice(1, None)
        b[axis] = slice(None, -1)
        diff = label[tuple(a)] != label[tuple(b)]
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    return edge


# ----------------------------------------------------------------------------- rendering


@dataclass
class _Appearance:
    """Everything about a scene's look that is independent of the layout, so a 2D+t sequence
    can keep one appearance while its objects move."""

    base: float
    offsets: np.ndarray  # per class
    background: np.ndarray
    speckle: np.ndarray
    stripes: np.ndarray
    rim: float
    gain: np.ndarray  # multiplicative bias field


def _appearance(spec: SyntheticSpec, rng: np.random.Generator) -> _Appearance:
    shape = spec.shape
    assert shape is not None
    dims = len(shape)
    offsets = rng.uniform(-spec.class_offset, spec.class_offset, spec.num_classes)
    offsets[0] = 0.0
    background = spec.background_texture * (
        0.8 * _smooth_noise(rng, shape, 3.0) + 0.4 * _smooth_noise(rng, shape, 1.2)
    )
    speckle = spec.speckle_strength * _smooth_noise(rng, shape, 0.7)
    k = _unit_vector(rng, dims) * (2 * np.pi / rng.uniform(*spec.stripe_period))
    grid = _grid(shape)
    phase = sum(ki * g for ki, g in zip(k, grid, strict=True)) + rng.uniform(0, 2 * np.pi)
    # slightly wavy stripes look less synthetic and still read as one orientation
    phase = phase + 1.5 * _smooth_noise(rng, shape, 6.0)
    stripes = spec.stripe_strength * np.sin(phase).astype(np.float32)
    # bias: a smooth random field plus a linear ramp, scaled to +-bias_strength (relative)
    ramp_dir = _unit_vector(rng, dims)
    ramp = sum(d * (g / n - 0.5) for d, g, n in zip(ramp_dir, grid, shape, strict=True))
    field_ = _smooth_noise(rng, shape, 0.25 * min(shape)) + 3.0 * ramp
    field_ = (field_ - field_.min()) / max(float(np.ptp(field_)), 1e-8) * 2.0 - 1.0
    gain = 1.0 + spec.bias_strength * rng.uniform(0.7, 1.0) * field_
    return _Appearance(
        base=float(rng.uniform(*spec.base_intensity)),
        offsets=offsets.astype(np.float32),
        background=background.astype(np.float32),
        speckle=speckle.astype(np.float32),
        stripes=stripes,
        rim=float(rng.uniform(*spec.rim_strength)),
        gain=gain.astype(np.float32),
    )


def _render(
    label: np.ndarray, look: _Appearance, spec: SyntheticSpec, rng: np.random.Generator
) -> np.ndarray:
    """The image of a label map: per-class texture, dark boundaries, bias, blur, noise."""
    mean = look.base + look.offsets[label]
    texture = np.where(label == 0, look.background, 0.0)
    texture = np.where(label == 1, look.speckle * mean + 0.3 * look.background, texture)
    if spec.num_classes > 2:
        texture = np.where(label == 2, look.stripes + 0.3 * look.background, texture)
    edge = _gaussian_filter(_boundaries(label).astype(np.float32), 0.5)
    clean = (mean + texture - look.rim * np.clip(2.0 * edge, 0.0, 1.0)) * look.gain
    clean = _gaussian_filter(clean.astype(np.float32), spec.blur_sigma)
    noisy = clean + spec.noise_std * rng.standard_normal(label.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def generate_case(
    spec: SyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: float32 image in [0, 1] and uint8 labels 0..num_classes-1, same shape."""
    label = _layout(spec, rng)
    image = _render(label, _appearance(spec, rng), spec, rng)
    return image, label


def generate_moving_sequence(
    shape2d: tuple[int, int] = (64, 64),
    frames: int = 16,
    rng: np.random.Generator | None = None,
    spec: SyntheticSpec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2D+t "beating chamber": (frames, H, W) image and labels.

    A cell-textured chamber (1) inside a striped wall (2) contracts and relaxes over one cycle
    and drifts, while the texture and bias stay put, as tissue does under a moving probe. Stacked
    along time it is a 3D volume, which is how ldseg segments 2D+t data.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if frames < 2:
        raise LdsegError(f"a moving sequence needs at least 2 frames, got {frames}")
    base = spec or SyntheticSpec()
    spec = SyntheticSpec(**{**base.__dict__, "spatial_dims": 2, "shape": tuple(shape2d),
                            "spacing": None, "num_classes": 3})
    h, w = shape2d
    side = float(min(h, w))
    look = _appearance(spec, rng)
    grid = _grid((h, w))
    radius = side * rng.uniform(0.16, 0.2)
    wall = side * rng.uniform(0.06, 0.08)
    chamber = _Blob.random(rng, np.array([h / 2, w / 2]), radius, spec.deformation * 0.6)
    radii0 = chamber.radii.copy()
    drift_dir = _unit_vector(rng, 2)
    drift = side * 0.12
    phase0 = rng.uniform(0, 2 * np.pi)
    images = np.empty((frames, h, w), np.float32)
    labels = np.empty((frames, h, w), np.uint8)
    for t in range(frames):
        beat = np.sin(2 * np.pi * t / frames + phase0)  # one cycle over the sequence
        chamber.radii = radii0 * (1.0 + 0.22 * beat)
        chamber.center = np.array([h / 2, w / 2]) + drift_dir * drift * (t / (frames - 1) - 0.5)
        # the wall keeps its area roughly: thicker when the chamber contracts
        scale = 1.0 + wall * (1.0 - 0.3 * beat) / float(chamber.radii.mean())
        r, boundary, _ = chamber.coords(grid)
        label = np.zeros((h, w), np.uint8)
        label[r < boundary * scale] = 2
        label[r < boundary] = 1
        labels[t] = label
        images[t] = _render(label, look, spec, rng)
    return images, labels


# ----------------------------------------------------------------------------- dataset writer


def _case_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """Each case its own stream, so a case does not depend on how many came before it."""
    return np.random.default_rng([seed, split, index])


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    spatial_dims: int = 2,
    num_train: int = 24,
    num_test: int = 6,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
    overwrite: bool = False,
    spec: SyntheticSpec | None = None,
) -> Path:
    """Write an nnU-Net v2 raw dataset of synthetic scenes and return its folder.

    imagesTr/labelsTr hold the training cases, imagesTs/labelsTs the held-out ones (labelsTs are
    the reference for evaluation). 2D goes to 8-bit PNG (intensities 0..1 -> 0..255), 3D to
    float32 .nii.gz with unit spacing. Deterministic given `seed`. Built in a temporary sibling
    folder and renamed into place, so an interrupted run never leaves a half dataset behind.
    """
    out = Path(out_dir)
    if num_train < 1 or num_test < 0:
        raise LdsegError(f"need num_train >= 1 and num_test >= 0, got {num_train}, {num_test}")
    if out.exists() and not overwrite:
        raise LdsegError(f"{out} already exists (choose another folder or allow overwriting)")
    if spec is None:
        spec = SyntheticSpec(spatial_dims=spatial_dims, shape=shape)
    spatial_dims = spec.spatial_dims
    ending = ".png" if spatial_dims == 2 else ".nii.gz"
    assert spec.spacing is not None
    geometry = Geometry((*spec.spacing,), (0.0,) * spatial_dims,
                        Geometry.identity(spatial_dims).direction)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for split, (images_dir, labels_dir, count) in enumerate(
            [("imagesTr", "labelsTr", num_train), ("imagesTs", "labelsTs", num_test)]
        ):
            (tmp / images_dir).mkdir()
            (tmp / labels_dir).mkdir()
            prefix = "train" if split == 0 else "test"
            for i in range(count):
                image, label = generate_case(spec, _case_rng(seed, split, i))
                case = f"synth_{prefix}_{i:03d}"
                if spatial_dims == 2:
                    image = np.round(image * 255.0).astype(np.uint8)
                write_image(tmp / images_dir / f"{case}_0000{ending}", image, geometry)
                write_image(tmp / labels_dir / f"{case}{ending}", label, geometry)
        write_dataset_json(
            tmp, ["synthetic"], list(spec.class_names[: spec.num_classes]), num_train, ending,
            f"LdsegSynthetic{spatial_dims}D",
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset should not be
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- threshold baseline


def otsu_thresholds(image: np.ndarray, num_classes: int, bins: int = 256) -> np.ndarray:
    """The K-1 multi-level Otsu thresholds (in intensity units), exactly.

    Maximising the between-class variance is the same as maximising sum_k S_k^2 / W_k over K
    consecutive histogram segments (W: count, S: intensity sum), which splits over segments,
    so dynamic programming finds the exhaustive-search optimum in O(K * bins^2).
    """
    if num_classes < 2:
        raise LdsegError(f"Otsu needs at least 2 classes, got {num_classes}")
    x = np.asarray(image, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.full(num_classes - 1, lo)
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w = np.concatenate([[0.0], np.cumsum(counts)])
    s = np.concatenate([[0.0], np.cumsum(counts * centers)])
    seg_w = w[None, :] - w[:, None]  # [i, j]: bins i..j-1
    seg_s = s[None, :] - s[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(seg_w > 0, seg_s**2 / seg_w, 0.0)
    valid = np.triu(np.ones((bins + 1, bins + 1), bool), k=1)  # non-empty bin ranges i < j
    score = np.where(valid, score, -np.inf)
    best = score[0].copy()  # one segment covering bins 0..j-1
    back = []
    for _ in range(num_classes - 1):
        total = best[:, None] + score
        back.append(np.argmax(total, axis=0))
        best = np.max(total, axis=0)
    cuts = [bins]
    for arg in reversed(back):
        cuts.append(int(arg[cuts[-1]]))
    cut_bins = np.array(sorted(cuts[1:]))  # the K-1 inner segment starts
    return edges[cut_bins]


def otsu_baseline(image: np.ndarray, num_classes: int, bins: int = 256) -> np.ndarray:
    """Band index 0..K-1 of every voxel after multi-level Otsu thresholding (by intensity)."""
    thresholds = otsu_thresholds(image, num_classes, bins)
    return np.searchsorted(thresholds, np.asarray(image), side="right").astype(np.uint8)


def best_assignment_dice(
    bands: np.ndarray, label: np.ndarray, num_classes: int, *, permutations_only: bool = False
) -> float:
    """Mean foreground Dice of the best mapping from intensity bands to classes.

    By default any mapping is allowed (several bands may become one class, permutations
    included): an oracle-favourable baseline, so "the threshold fails" is a strong claim.
    A class absent from both the reference and the mapped bands counts as Dice 1.
    """
    k = num_classes
    bands = np.asarray(bands).astype(np.int64).ravel()
    label = np.asarray(label).astype(np.int64).ravel()
    n_bands = int(max(bands.max(initial=0) + 1, k))
    confusion = np.bincount(bands * k + label, minlength=n_bands * k).reshape(n_bands, k)
    band_sizes = confusion.sum(axis=1)
    class_sizes = confusion.sum(axis=0)
    if permutations_only:
        if n_bands != k:
            raise LdsegError(f"{n_bands} bands cannot be permuted onto {k} classes")
        mappings = itertools.permutations(range(k))
    else:
        mappings = itertools.product(range(k), repeat=n_bands)
    best = 0.0
    rows = np.arange(n_bands)
    for mapping in mappings:
        m = np.asarray(mapping)
        tp = np.bincount(m, weights=confusion[rows, m], minlength=k)
        pred = np.bincount(m, weights=band_sizes, minlength=k)
        denom = pred + class_sizes
        with np.errstate(divide="ignore", invalid="ignore"):
            dice = np.where(denom > 0, 2.0 * tp / denom, 1.0)
        best = max(best, float(dice[1:].mean()))
    return best
