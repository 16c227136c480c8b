"""The two intensity normalisations of Section 4.4.1 and the network's intensity scale.

(a) Inputs (non-harmonised, what the network sees): per 3D volume, clip at the 99.95th percentile of
    the foreground, min-max to [-1, 1], background -1 (after the authors' code; their exact variant, which
    their released network expects, is `preprocessing.authors`).
(b) Targets (harmonised, what the network must produce): shift the minimum to 0, then scale linearly so
    the median inside the white matter is 1/7 (T2), 1/5 (ceT1), 1/3 (FLAIR) - the paper's values - and
    our choices for the other keys. The network works on 2 * target - 1 (the authors' code, no clipping).
"""

from __future__ import annotations

import numpy as np

from mmhvae.errors import InputError
from mmhvae.preprocessing.masks import foreground_mask

INPUT_PERCENTILE = 99.95
BACKGROUND = -1.0

# Paper (Section 4.4.1) for t2, t1c, flair. For t1 and pd the paper has no value: t1 follows ceT1 (the
# same contrast family, WM brighter than GM) and pd sits between T2 and FLAIR. Override per call.
WM_MEDIAN_TARGETS: dict[str, float] = {"t2": 1 / 7, "t1c": 1 / 5, "flair": 1 / 3, "t1": 1 / 5, "pd": 1 / 4}


def foreground_range(array: np.ndarray, foreground: np.ndarray, percentile: float) -> tuple[float, float]:
    """The clip range of an input normalisation: the foreground's minimum and its `percentile`-th percentile."""
    values = array[foreground]
    low, high = float(values.min()), float(np.percentile(values, percentile))
    if high <= low:
        raise InputError("the image is constant inside its foreground")
    return low, high


def normalise_input(
    array: np.ndarray, foreground: np.ndarray | None = None, percentile: float = INPUT_PERCENTILE
) -> np.ndarray:
    """Input normalisation of one 3D volume to [-1, 1] with background -1 (Section 4.4.1, authors' code)."""
    foreground = foreground_mask(array) if foreground is None else foreground.astype(bool)
    if not foreground.any():
        raise InputError("the image has no foreground (it is constant)")
    low, high = foreground_range(array, foreground, percentile)
    out = 2.0 * (np.clip(array, low, high) - low) / (high - low) - 1.0
    out[~foreground] = BACKGROUND
    return out.astype(np.float32)


def harmonise_target(
    array: np.ndarray,
    wm_mask: np.ndarray,
    modality: str,
    wm_targets: dict[str, float] | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Target harmonisation (Section 4.4.1): minimum to 0, then the white-matter median to its target.

    `foreground` (e.g. the ultrasound field of view) restricts the minimum and is the only region kept;
    voxels outside it are set to 0. Raises InputError when the WM mask is empty or its median is 0.
    """
    targets = WM_MEDIAN_TARGETS | (wm_targets or {})
    if modality not in targets:
        raise InputError(f"no white-matter target value for modality '{modality}'")
    foreground = np.ones(array.shape, bool) if foreground is None else foreground.astype(bool)
    wm = wm_mask.astype(bool) & foreground
    if not wm.any():
        raise InputError(f"{modality}: the white-matter mask is empty inside the foreground")
    shifted = array - array[foreground].min()
    median = float(np.median(shifted[wm]))
    if median <= 0:
        raise InputError(f"{modality}: the white-matter median is not above the minimum; cannot harmonise")
    out = shifted * (targets[modality] / median)
    out[~foreground] = 0.0
    return out.astype(np.float32)


def target_to_network(target: np.ndarray) -> np.ndarray:
    """Harmonised intensities to the network's scale (2t - 1, no clipping, as the authors)."""
    return (2.0 * target - 1.0).astype(np.float32)


def network_to_target(image: np.ndarray) -> np.ndarray:
    """The network's scale back to harmonised intensities t = (y + 1) / 2."""
    return ((image + 1.0) / 2.0).astype(np.float32)
