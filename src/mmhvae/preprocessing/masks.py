"""Where the images are defined: the ultrasound field of view (Section 4.4.1), the foreground of an image, and
the white matter that target harmonisation needs (from a tissue label map, else from an intensity clustering)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmhvae.errors import InputError
from mmhvae.io.subjects import Subject
from mmhvae.modalities import ULTRASOUND


def field_of_view(subject: Subject) -> np.ndarray:
    """The ultrasound FOV when there is an ultrasound, else the union of the images' foregrounds."""
    if ULTRASOUND in subject.volumes:
        return ultrasound_fov_mask(subject.volumes[ULTRASOUND].array)
    masks = [foreground_mask(v.array) for v in subject.volumes.values()]
    return np.logical_or.reduce(masks)


def white_matter_mask(subject: Subject, modality: str, fov: np.ndarray) -> np.ndarray:
    """White matter from tissue.nii.gz (label 3), else from a 3-class clustering of this image."""
    if subject.tissue is not None:
        return white_matter_from_labels(subject.tissue.array)
    return white_matter_by_clustering(subject.volumes[modality].array, modality, foreground=fov)

# Where white matter falls among the three brain classes, from dark (0) to bright (2), used to pick the
# WM class of a 3-class intensity clustering when no label map is given.
WM_RANK_BY_CONTRAST: dict[str, int] = {"t1": 2, "t1c": 2, "t2": 0, "pd": 0, "flair": 1}
WM_LABEL = 3  # in tissue.nii.gz: 0 background, 1 CSF, 2 GM, 3 WM, 4 non-brain


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Voxels above the volume's minimum (the background of our images is their minimum)."""
    return array > array.min()


def crop_to_fov(array: np.ndarray, fov_mask: np.ndarray, background: float = 0.0) -> np.ndarray:
    """Set voxels outside the ultrasound field of view to background (Section 4.4.1)."""
    out = np.array(array, dtype=np.float32, copy=True)
    out[~fov_mask.astype(bool)] = background
    return out


def ultrasound_fov_mask(us: np.ndarray) -> np.ndarray:
    """The field of view of an ultrasound volume: non-background voxels, holes filled slice by slice.

    Anechoic regions inside the fan can reach the background value; filling each 2D slice's holes keeps
    them in the FOV.
    """
    inside = us > us.min()
    return np.stack([ndimage.binary_fill_holes(inside[..., k]) for k in range(us.shape[2])], axis=2)


def white_matter_from_labels(labels: np.ndarray, wm_label: int = WM_LABEL) -> np.ndarray:
    return np.rint(labels).astype(np.int64) == wm_label


def white_matter_by_clustering(
    array: np.ndarray, modality: str, foreground: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """A white-matter mask from a 3-class Gaussian mixture of foreground intensities (offline fallback).

    The WM class is chosen by the contrast's tissue order (WM brightest in T1, darkest in T2/PD, middle in
    FLAIR). Crude next to SynthSeg (which cannot be obtained offline); prefer a tissue label map.
    """
    from sklearn.mixture import GaussianMixture

    if modality not in WM_RANK_BY_CONTRAST:
        raise InputError(f"no tissue-order rule to find white matter in modality '{modality}'")
    foreground = foreground_mask(array) if foreground is None else foreground.astype(bool)
    values = array[foreground].reshape(-1, 1).astype(np.float64)
    if values.shape[0] < 30:
        raise InputError(f"{modality}: too few foreground voxels to find white matter")
    rng = np.random.default_rng(seed)
    fit_on = values if values.shape[0] <= 200_000 else values[rng.choice(values.shape[0], 200_000, replace=False)]
    mixture = GaussianMixture(3, random_state=seed).fit(fit_on)
    order = np.argsort(mixture.means_.ravel())
    wm_class = order[WM_RANK_BY_CONTRAST[modality]]
    mask = np.zeros(array.shape, bool)
    mask[foreground] = mixture.predict(values) == wm_class
    return mask
