"""Scores of whole volumes as the paper reports them (Section 4.4.1): PSNR, SSIM and LPIPS of every 2D slice
that has pixels in the mask, and their mean over the slices of a subject."""

from __future__ import annotations

import math

import numpy as np

from mmhvae.evaluation.lpips import lpips_distance, lpips_distances
from mmhvae.evaluation.metrics import DataRange, check_pair, masked_psnr, masked_ssim

# ---------------------------------------------------------------------------------------------
# Per-slice, per-volume and per-subject helpers
# ---------------------------------------------------------------------------------------------


def slice_metrics(
    pred2d: np.ndarray,
    target2d: np.ndarray,
    mask2d: np.ndarray,
    data_range: DataRange = 2.0,
    with_lpips: bool = True,
    device: str = "cpu",
) -> dict[str, float]:
    """PSNR, SSIM and (if ``with_lpips``) LPIPS of one 2D slice inside ``mask2d``.

    Returns ``{"psnr": ..., "ssim": ...}`` plus ``"lpips"`` when requested.
    """
    result = {
        "psnr": masked_psnr(pred2d, target2d, mask2d, data_range),
        "ssim": masked_ssim(pred2d, target2d, mask2d, data_range),
    }
    if with_lpips:
        result["lpips"] = lpips_distance(pred2d, target2d, mask2d, device=device)
    return result


def volume_metrics(
    pred3d: np.ndarray,
    target3d: np.ndarray,
    mask3d: np.ndarray,
    axis: int = 2,
    data_range: DataRange = 2.0,
    with_lpips: bool = True,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """:func:`slice_metrics` for every slice along ``axis`` whose mask is not empty.

    Each dict also holds ``"slice"``, the slice index. With ``data_range="target"`` the range
    is taken per slice (as in the authors' evaluation).
    """
    pred3d, target3d, mask3d = np.asarray(pred3d), np.asarray(target3d), np.asarray(mask3d)
    check_pair(pred3d, target3d, mask3d, ndim=3)
    results = []
    for index in range(mask3d.shape[axis]):
        mask2d = np.take(mask3d, index, axis=axis)
        if not mask2d.any():
            continue
        metrics = slice_metrics(
            np.take(pred3d, index, axis=axis),
            np.take(target3d, index, axis=axis),
            mask2d,
            data_range=data_range,
            with_lpips=False,
        )
        results.append({"slice": index, **metrics})
    if with_lpips and results:  # all slices in a few network passes
        indices = [r["slice"] for r in results]
        values = lpips_distances(np.moveaxis(np.take(pred3d, indices, axis=axis), axis, 0),
                                 np.moveaxis(np.take(target3d, indices, axis=axis), axis, 0),
                                 np.moveaxis(np.take(mask3d, indices, axis=axis), axis, 0), device=device)
        for row, value in zip(results, values):
            row["lpips"] = float(value)
    return results


def aggregate_slices(per_slice: list[dict[str, float]]) -> dict[str, float]:
    """Per-subject summary: the mean of each metric over slices, plus ``n_slices``.

    NaN values (SSIM of a slice whose mask holds no whole window) are left out of the mean
    of that metric. An ``inf`` PSNR (a slice reproduced exactly) makes the mean ``inf``.
    """
    summary: dict[str, float] = {"n_slices": len(per_slice)}
    names = [name for name in ("psnr", "ssim", "lpips") if per_slice and name in per_slice[0]]
    for name in names:
        values = np.array([row[name] for row in per_slice], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = float(values.mean()) if values.size else math.nan
    return summary
