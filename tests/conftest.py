"""Shared test helpers: small synthetic NIfTI subjects with oblique geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def oblique_affine(zooms=(1.5, 1.5, 2.0), angle_deg=12.0, origin=(-40.3, 25.1, -7.7)) -> np.ndarray:
    """A voxel-to-RAS affine with a rotation about two axes, non-uniform zooms and an odd origin."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None, qform_code=1, sform_code=2,
                dtype=np.float32) -> Path:
    affine = oblique_affine() if affine is None else affine
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def brain_like(shape=(20, 18, 6), seed=0) -> np.ndarray:
    """Background 0 with a textured positive blob, so foreground and percentiles are meaningful."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt(sum(((g - c) / (s / 2.2)) ** 2 for g, c, s in zip(grid, centre, shape)))
    image = np.where(radius < 1.0, 100 + 50 * rng.random(shape), 0.0)
    return image.astype(np.float32)


def make_subject(folder: Path, modalities=("us", "t2"), shape=(20, 18, 6), affine=None, seed=0, names=None):
    """A canonical-layout subject folder with the given modalities (file names from `names` if given)."""
    for i, key in enumerate(modalities):
        name = (names or {}).get(key, key)
        write_nifti(folder / f"{name}.nii.gz", brain_like(shape, seed + i), affine)
    return folder


@pytest.fixture
def subject_factory(tmp_path):
    def factory(name="s1", **kwargs):
        return make_subject(tmp_path / "data" / name, **kwargs)

    return factory
