"""The geometry of preparing real volumes (`mmhvae prepare`), and the way back to a subject's original grid.

A subject's volumes are put in a canonical axis order with the chosen slice axis third (the network slices the
third array axis), resampled to the model's voxel size and cropped to the brain or field of view. `GridRecord`
remembers each step, so that predictions made on the prepared grid go back onto the original grid, with the
original header.

- Orientation: nibabel's closest-canonical reordering (`nibabel.as_closest_canonical`: axes permuted and flipped,
  never interpolated) onto RAS for axial slices, and onto its permutations for coronal and sagittal ones;
  `stored` keeps the axes as stored (an ultrasound sweep, whose third axis is the sweep).
- Voxel size: SimpleITK resampling (linear; nearest for labels) that keeps the axes' directions, so an oblique
  acquisition stays oblique, and keeps the centre of the field. Skipped when the voxels already have that size.
- The way back is exact (the same voxels, un-cropped and un-permuted) when no resampling was needed, and a linear
  resampling onto the original grid otherwise; voxels cropped away come back as background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from mmhvae.errors import InputError
from mmhvae.io.volumes import (
    AFFINE_TOLERANCE_MM,
    Volume,
    check_fits_in_memory,
    header_from_text,
    header_to_text,
    new_volume,
    resample_onto,
)

# The axis codes (nibabel's: the direction each array axis increases towards) of the prepared volumes, by slice
# axis; None keeps the stored axes.
SLICE_AXES: dict[str, tuple[str, str, str] | None] = {
    "axial": ("R", "A", "S"),
    "coronal": ("R", "S", "A"),
    "sagittal": ("A", "S", "R"),
    "stored": None,
}
SPACING_TOLERANCE_MM = 1e-3
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def check_slice_axis(slice_axis: str) -> None:
    if slice_axis not in SLICE_AXES:
        raise InputError(f"unknown slice axis '{slice_axis}'; choose one of {', '.join(SLICE_AXES)}")


def orientation_to(affine: np.ndarray, slice_axis: str) -> np.ndarray:
    """The nibabel orientation transform from the stored axes to those of `slice_axis` (identity for 'stored')."""
    check_slice_axis(slice_axis)
    codes = SLICE_AXES[slice_axis]
    if codes is None:
        return np.array([[0, 1], [1, 1], [2, 1]], float)
    return orientations.ornt_transform(nib.io_orientation(affine), orientations.axcodes2ornt(codes))


def inverse_orientation(transform: np.ndarray) -> np.ndarray:
    """The transform that undoes `transform` (input axis i went to output axis transform[i, 0], flipped if -1)."""
    inverse = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return inverse


def reoriented(volume: Volume, transform: np.ndarray) -> Volume:
    """The same voxels with their axes permuted and flipped by `transform`, and the affine that keeps them in place."""
    array = np.ascontiguousarray(orientations.apply_orientation(volume.array, transform), dtype=np.float32)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.shape)
    return new_volume(array, affine)


def grid_at_spacing(volume: Volume, spacing_mm: float) -> Volume | None:
    """An empty volume over `volume`'s field at `spacing_mm` (same axis directions and centre), or None when its
    voxels already have that size."""
    zooms = np.linalg.norm(volume.affine[:3, :3], axis=0)
    if np.all(np.abs(zooms - spacing_mm) <= SPACING_TOLERANCE_MM):
        return None
    shape = np.maximum(1, np.rint(np.array(volume.shape) * zooms / spacing_mm)).astype(int)
    check_fits_in_memory(int(np.prod(shape)), 2, volume.path or Path("."),
                         f"the volume resampled to {spacing_mm:g} mm (shape {tuple(shape)})")
    linear = volume.affine[:3, :3] / zooms * spacing_mm
    centre = volume.affine[:3, :3] @ ((np.array(volume.shape) - 1) / 2.0) + volume.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ ((shape - 1) / 2.0)
    return new_volume(np.zeros(tuple(int(n) for n in shape), np.float32), affine)


def bounding_box(mask: np.ndarray, margin: int) -> Box:
    """The smallest box holding `mask`, grown by `margin` voxels on every side (within the array)."""
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + 1 + margin, mask.shape)
    return tuple((int(lo), int(hi)) for lo, hi in zip(low, high))


def cropped(volume: Volume, box: Box) -> Volume:
    """The part of `volume` inside `box`, with the affine that keeps it in place."""
    index = tuple(slice(lo, hi) for lo, hi in box)
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([lo for lo, _ in box], float) + volume.affine[:3, 3]
    return new_volume(np.ascontiguousarray(volume.array[index]), affine)


def _matrix(values) -> np.ndarray:
    return np.array(values, dtype=np.float64)


@dataclass
class GridRecord:
    """How a subject's prepared grid was made from its original one, and the way back (saved as prepared.json)."""

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    original_header: nib.Nifti1Header
    transform: np.ndarray  # nibabel orientation transform, stored axes -> prepared axes
    oriented_shape: tuple[int, int, int]
    resampled_affine: np.ndarray | None  # the grid at the model's voxel size, before cropping; None: not resampled
    resampled_shape: tuple[int, int, int] | None
    crop: Box
    prepared_affine: np.ndarray
    prepared_shape: tuple[int, int, int]

    def original_grid(self) -> Volume:
        """The original grid and header, with empty voxels: what predictions are written on."""
        return Volume(np.zeros(self.original_shape, np.float32), self.original_affine.copy(),
                      self.original_header.copy(), None)

    def describes(self, grid: Volume) -> bool:
        """Whether `grid` is the prepared grid this record was made for."""
        return grid.shape == self.prepared_shape and bool(
            np.max(np.abs(grid.affine - self.prepared_affine)) <= AFFINE_TOLERANCE_MM)

    def back_to_original(self, array: np.ndarray, interpolation: str = "linear", fill: float = 0.0) -> np.ndarray:
        """`array` on the prepared grid, back on the original grid: voxels cropped away are `fill`."""
        full_shape = self.oriented_shape if self.resampled_shape is None else self.resampled_shape
        full = np.full(full_shape, fill, np.float32)
        full[tuple(slice(lo, hi) for lo, hi in self.crop)] = array
        if self.resampled_affine is None:
            return np.ascontiguousarray(orientations.apply_orientation(full, inverse_orientation(self.transform)))
        moving = new_volume(full, self.resampled_affine)
        return resample_onto(moving, self.original_grid(), interpolation, background=fill).array

    def to_json(self) -> dict:
        return {
            "original": {"shape": list(self.original_shape), "affine": self.original_affine.tolist(),
                         "header": header_to_text(self.original_header)},
            "orientation": self.transform.tolist(),
            "oriented_shape": list(self.oriented_shape),
            "resampled": None if self.resampled_affine is None else {
                "shape": list(self.resampled_shape), "affine": self.resampled_affine.tolist()},
            "crop": [list(b) for b in self.crop],
            "prepared": {"shape": list(self.prepared_shape), "affine": self.prepared_affine.tolist()},
        }

    @classmethod
    def from_json(cls, values: dict, path: Path) -> GridRecord:
        try:
            resampled = values["resampled"]
            return cls(tuple(values["original"]["shape"]), _matrix(values["original"]["affine"]),
                       header_from_text(values["original"]["header"]), _matrix(values["orientation"]),
                       tuple(values["oriented_shape"]), None if resampled is None else _matrix(resampled["affine"]),
                       None if resampled is None else tuple(resampled["shape"]),
                       tuple(tuple(int(v) for v in b) for b in values["crop"]),
                       _matrix(values["prepared"]["affine"]), tuple(values["prepared"]["shape"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a record of `mmhvae prepare` ({type(exc).__name__}: {exc})", path) from None
