"""Labelled ultrasound for the segmentation task (Section 4.4.3): the tumour-core mask of a label map,
acquired B-mode volumes on the [0, 1] scale of synthetic ultrasound, and the voxel-size check that keeps a
network on the grid it was trained at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mmhvae.errors import InputError
from mmhvae.inference.predict import to_intensities
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.volumes import read_volume
from mmhvae.modalities import ULTRASOUND
from mmhvae.preprocessing.intensity import normalise_input
from mmhvae.preprocessing.masks import ultrasound_fov_mask

TUMOUR_CORE_LABELS: tuple[int, ...] = (1, 3)  # seg.nii.gz: 1 necrosis, 2 oedema, 3 enhancing
SPACING_TOLERANCE = 0.02  # relative in-plane voxel size difference accepted between training and use


# ----------------------------------------------------------------------------------------------------
# Labels, intensities, volumes
# ----------------------------------------------------------------------------------------------------


def tumour_core(seg: np.ndarray, labels: Sequence[int] = TUMOUR_CORE_LABELS) -> np.ndarray:
    """The tumour mask of a label map: necrosis and enhancing tumour by default (the tumour core)."""
    return np.isin(np.rint(seg).astype(np.int64), list(labels))


def ultrasound_intensities(us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An acquired B-mode volume on the scale of synthetic ultrasound ([0, 1] in its FOV, 0 outside), and the FOV."""
    fov = ultrasound_fov_mask(us)
    return to_intensities(normalise_input(us, fov), fov), fov


@dataclass
class LabelledVolume:
    """One ultrasound volume (acquired or synthetic) in [0, 1], its tumour mask and field of view, [H, W, S]."""

    subject: str
    image: np.ndarray
    tumour: np.ndarray
    fov: np.ndarray
    spacing_mm: tuple[float, ...]
    source: str = ""  # e.g. the MR subset it was synthesised from


def header_spacing(path: Path) -> tuple[float, ...]:
    """Voxel size (mm) from a NIfTI header, without reading the voxels."""
    try:
        return tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3])
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"cannot read the NIfTI header ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                         path) from None


def check_spacing(spacing_mm: Sequence[float], expected_mm: Sequence[float], path: Path | None, what: str) -> None:
    """Refuse an in-plane voxel size that differs from the one a network was (or will be) trained at."""
    if not np.allclose(spacing_mm[:2], expected_mm[:2], rtol=SPACING_TOLERANCE, atol=0.0):
        raise InputError(f"{what}: in-plane voxel size {tuple(round(s, 3) for s in spacing_mm[:2])} mm differs "
                         f"from {tuple(round(s, 3) for s in expected_mm[:2])} mm (the segmentation network's); "
                         "resample it first", path)


def load_labelled_ultrasound(folder: Path, labels: Sequence[int] = TUMOUR_CORE_LABELS
                             ) -> tuple[list[LabelledVolume], list[str]]:
    """Acquired ultrasound and tumour mask of every subject in `folder`; subjects without tumour are returned
    by name only (left out: Dice and ASSD need a reference tumour)."""
    volumes, left_out = [], []
    for files in discover_subjects(folder):
        if ULTRASOUND not in files.modalities:
            raise InputError(f"subject '{files.name}' has no ultrasound image (us.nii.gz)", Path(folder) / files.name)
        if files.seg is None:
            raise InputError(f"subject '{files.name}' has no label map (seg.nii.gz)", files.modalities[ULTRASOUND])
        us, seg = read_volume(files.modalities[ULTRASOUND]), read_volume(files.seg)
        if not us.same_grid(seg):
            raise InputError(f"subject '{files.name}': the label map is not on the ultrasound's grid", files.seg)
        try:
            image, fov = ultrasound_intensities(us.array)
        except InputError as exc:
            raise InputError(exc.problem, us.path) from None
        tumour = tumour_core(seg.array, labels) & fov
        if not tumour.any():
            left_out.append(files.name)
            continue
        volumes.append(LabelledVolume(files.name, image, tumour, fov, us.zooms, "acquired"))
    return volumes, left_out
