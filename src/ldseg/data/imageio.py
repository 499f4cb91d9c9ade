"""Reading and writing images with their geometry.

2D formats (.png, .bmp, .tif/.tiff) go through Pillow, 3D formats (.nii.gz, .nii, .nrrd, .mha)
through SimpleITK, as nnU-Net does. Arrays are returned channels first, spatial axes in numpy
order (for 3D that is ITK's z, y, x). The `Geometry` keeps ITK's origin and direction untouched
so that a prediction is written back onto exactly the input's grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError

from ldseg.errors import LdsegError
from ldseg.files import atomic_write

FORMATS_2D = (".png", ".bmp", ".tif", ".tiff")
FORMATS_3D = (".nii.gz", ".nii", ".nrrd", ".mha")
SUPPORTED_FORMATS = FORMATS_2D + FORMATS_3D


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in space.

    `spacing` is in array-axis order (what resampling needs); `origin` and `direction`
    are kept in ITK order exactly as read, for writing.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def identity(cls, spatial_dims: int) -> Geometry:
        eye = tuple(float(v) for v in np.eye(spatial_dims).ravel())
        return cls((1.0,) * spatial_dims, (0.0,) * spatial_dims, eye)

    @property
    def spatial_dims(self) -> int:
        return len(self.spacing)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(*(tuple(float(v) for v in data[k]) for k in ("spacing", "origin", "direction")))


def file_ending(path: str | Path) -> str:
    """The format suffix of a path ('.nii.gz' counts as one suffix), lower case."""
    name = Path(path).name.lower()
    for ending in SUPPORTED_FORMATS:
        if name.endswith(ending):
            return ending
    return Path(name).suffix


def spatial_dims_of_ending(ending: str) -> int:
    if ending in FORMATS_2D:
        return 2
    if ending in FORMATS_3D:
        return 3
    supported = ", ".join(SUPPORTED_FORMATS)
    raise LdsegError(f"unsupported file format '{ending}' (supported: {supported})")


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an image as (channels, *spatial) with its geometry; one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise LdsegError(f"{path}: file not found")
    ending = file_ending(path)
    if spatial_dims_of_ending(ending) == 2:
        return _read_2d(path)
    return _read_3d(path)


def image_info(path: str | Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Spatial shape and spacing (array-axis order) from the header alone, for planning."""
    path = Path(path)
    if spatial_dims_of_ending(file_ending(path)) == 2:
        try:
            with Image.open(path) as img:
                return (img.height, img.width), (1.0, 1.0)
        except (UnidentifiedImageError, OSError) as exc:
            raise LdsegError(f"{path}: cannot read image ({exc})") from None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise LdsegError(f"{path}: cannot read image header (corrupt or truncated?)") from None
    return tuple(reversed(reader.GetSize())), tuple(float(s) for s in reversed(reader.GetSpacing()))


def _read_2d(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA"):
                alpha = img.mode == "PA" or "transparency" in img.info
                img = img.convert("RGBA" if alpha else "RGB")
            if img.mode == "LA":
                img = img.convert("L")
            if img.mode == "RGBA":
                img = img.convert("RGB")
            array = np.array(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LdsegError(f"{path}: cannot read image ({exc})") from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise LdsegError(f"{path}: unexpected image shape {array.shape}")
    return np.ascontiguousarray(array), Geometry.identity(2)


def _read_3d(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "rror" in line or "annot" in line), "")
        raise LdsegError(
            f"{path}: cannot read image (corrupt or truncated? {detail[:160]})"
        ) from None
    dims = image.GetDimension()
    if dims != 3:
        raise LdsegError(f"{path}: expected a 3D image, found {dims}D")
    n_components = image.GetNumberOfComponentsPerPixel()
    if n_components > 1:
        array = np.moveaxis(array, -1, 0)  # vector image: (z, y, x, c) -> (c, z, y, x)
    else:
        array = array[None]
    geometry = Geometry(
        spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )
    return np.ascontiguousarray(array), geometry


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry | None = None) -> None:
    """Write a single-channel spatial array atomically (temporary name, then rename).

    2D label maps go to PNG/BMP as 8- or 16-bit grey; float arrays need a .tif (32-bit float)
    or a 3D format.
    """
    path = Path(path)
    ending = file_ending(path)
    dims = spatial_dims_of_ending(ending)
    if array.ndim != dims:
        raise LdsegError(f"{path}: cannot write a {array.ndim}D array as a {dims}D '{ending}' file")
    with atomic_write(path, suffix=ending) as tmp:
        if dims == 2:
            _write_2d(tmp, array, ending)
        else:
            _write_3d(tmp, array, geometry or Geometry.identity(3))


def _write_2d(path: Path, array: np.ndarray, ending: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        if ending not in (".tif", ".tiff"):
            raise LdsegError(f"{path}: float images need a .tif file, not '{ending}'")
        Image.fromarray(array.astype(np.float32), mode="F").save(path, format="TIFF")
        return
    if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise LdsegError(f"{path}: integer values outside 0..65535 cannot be written as {ending}")
    fmt = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[ending]
    if array.max(initial=0) <= 255:
        Image.fromarray(array.astype(np.uint8), mode="L").save(path, format=fmt)
    else:
        if ending == ".bmp":
            raise LdsegError(f"{path}: values above 255 cannot be written as BMP")
        Image.fromarray(array.astype(np.uint16)).save(path, format=fmt)


def _write_3d(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    if array.dtype == np.bool_ or array.dtype == np.int64:
        array = array.astype(np.uint8 if array.max(initial=0) <= 255 and array.min(initial=0) >= 0
                             else np.int32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(path), useCompression=True)
