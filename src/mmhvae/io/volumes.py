"""NIfTI volumes with their full header: reading, writing, resampling, and refusing what cannot fit in memory.

Geometry travels with the array: a Volume holds the voxel array exactly as stored (no reorientation)
together with its affine and NIfTI header, and every output is written with a copy of that header,
so affine, qform/sform (and their codes), zooms and units survive bit-exact.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mmhvae.errors import InputError
from mmhvae.io.files import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-3
# Working float32 copies of a subject's voxels held while it is processed: the images as read, the
# normalised inputs, the harmonised targets and the predictions (slices go through the network in batches).
WORKING_COPIES = 4
MEMORY_LIMIT_VARIABLE = "MMHVAE_MEMORY_LIMIT_GB"


# ----------------------------------------------------------------------------------------------------
# Memory: refuse a volume that cannot fit before allocating it
# ----------------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory this process may still use: $MMHVAE_MEMORY_LIMIT_GB if set, else the system's available memory
    (MemAvailable of /proc/meminfo, or free pages where that does not exist); None when unknown."""
    limit = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if limit:
        return int(float(limit) * 2**30)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(voxels: int, copies: float, path: Path, what: str) -> None:
    """InputError if `copies` float32 copies of `voxels` voxels exceed the available memory."""
    needed = int(voxels) * 4 * copies
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {needed / 2**30:.1f} GiB of memory, more than the "
                         f"{available / 2**30:.1f} GiB available; crop or resample it first", path)


def header_voxels(path: Path) -> tuple[int, tuple[int, ...]]:
    """Number of voxels and shape from a NIfTI header, without reading the data."""
    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:  # damaged files are reported by read_volume with the same wording
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read as NIfTI ({detail})", path) from None
    return int(np.prod(shape, dtype=np.int64)), shape


# ----------------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A 3D voxel array with the geometry it was read with (affine in RAS mm, full NIfTI header)."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms()[:3])

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, other voxels (e.g. a prediction on this subject's grid)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array of shape {array.shape} does not fit the grid {self.array.shape}")
        return Volume(array, self.affine.copy(), self.header.copy(), None)

    def same_grid(self, other: Volume, tolerance_mm: float = AFFINE_TOLERANCE_MM) -> bool:
        return self.shape == other.shape and bool(np.max(np.abs(self.affine - other.affine)) <= tolerance_mm)


def nifti_stem(path: Path) -> str | None:
    """File name without its NIfTI suffix, or None if it is not a NIfTI file name."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_volume(path: str | Path, nan_to_num: bool = False, dtype=np.float32) -> Volume:
    """Read a 3D NIfTI volume; any problem is an InputError naming the file.

    A trailing singleton 4th dimension (x, y, z, 1) is accepted; other 4D, 2D and empty arrays are not.
    NaN or infinite voxels are refused unless `nan_to_num` replaces them (NaN -> 0, +-inf -> finite extremes).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"not a NIfTI image (read as {type(image).__name__})", path)
        # The array as stored plus its float copy, checked before either is allocated.
        stored = np.dtype(image.get_data_dtype()).itemsize / 4
        check_fits_in_memory(int(np.prod(image.shape, dtype=np.int64)), 1 + stored, path,
                             f"the volume of shape {tuple(image.shape)}")
        array = np.asarray(image.dataobj, dtype=dtype)
    except InputError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib raise many types for damaged files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read as NIfTI ({detail})", path) from None
    if array.size == 0:
        raise InputError(f"the volume is empty (shape {array.shape})", path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, found a {array.ndim}D array of shape {array.shape}", path)
    if not np.all(np.isfinite(array)):
        if not nan_to_num:
            count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InputError(f"{count} voxels are NaN or infinite (use --nan-to-num to replace them)", path)
        array = np.nan_to_num(array, nan=0.0)
    header = image.header.copy()
    return Volume(np.ascontiguousarray(array), image.affine.copy(), header, path)


def write_volume(path: str | Path, array: np.ndarray, like: Volume, dtype=np.float32) -> Path:
    """Write `array` on the grid of `like`, with a copy of its header, atomically.

    The header's qform/sform, their codes, zooms and units are kept as they were read; only the data
    type and intensity scaling are set for the new voxels.
    """
    if tuple(array.shape) != like.shape:
        raise ValueError(f"array of shape {array.shape} does not fit the grid {like.shape} of {like.path}")
    header = like.header.copy()
    header.set_data_dtype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        header.set_slope_inter(1.0, 0.0)
    if header["dim"][0] > 3:
        header.set_data_shape(array.shape)
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), like.affine, header)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def header_to_text(header: nib.Nifti1Header) -> str:
    """The 348 bytes of a NIfTI-1 header as base64 text (for a JSON record of a grid; extensions are not kept)."""
    return base64.b64encode(header.binaryblock).decode("ascii")


def header_from_text(text: str) -> nib.Nifti1Header:
    """The header `header_to_text` wrote, bit-exact."""
    return nib.Nifti1Header(binaryblock=base64.b64decode(text.encode("ascii")), check=False)


def new_volume(array: np.ndarray, affine: np.ndarray, zooms_unit: str = "mm") -> Volume:
    """A volume with a fresh header (qform and sform set from the affine, code 1 = scanner)."""
    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz=zooms_unit, t="sec")
    return Volume(np.asarray(array, dtype=np.float32), image.affine.copy(), image.header.copy(), None)


def sitk_from_volume(array: np.ndarray, affine: np.ndarray):
    """SimpleITK image (LPS) from a voxel array and its RAS affine."""
    import SimpleITK as sitk

    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    linear = ras_to_lps @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (linear / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in ras_to_lps @ affine[:3, 3]))
    return image


def resample_onto(moving: Volume, reference: Volume, interpolation: str = "linear",
                  background: float | None = None) -> Volume:
    """Resample `moving` onto the grid of `reference` (SimpleITK; linear or nearest for labels). Points outside
    `moving` take `background` (default: its minimum)."""
    import SimpleITK as sitk

    method = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolation]
    background = float(moving.array.min()) if background is None else float(background)
    try:
        out = sitk.Resample(
            sitk_from_volume(moving.array, moving.affine),
            sitk_from_volume(reference.array, reference.affine),
            sitk.Transform(),
            method,
            background,
        )
    except RuntimeError as exc:
        raise InputError(f"cannot resample onto {reference.path}: {str(exc).splitlines()[0]}", moving.path) from None
    array = np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0)).astype(np.float32)
    return reference.with_array(array)
