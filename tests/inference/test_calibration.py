"""Split-conformal intervals (inference/calibration.py): coverage on synthetic data with a known error law."""

from __future__ import annotations

import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.inference.calibration import Calibration, conformal_quantile, fit_group, gaussian_interval


def heteroscedastic(rng: np.random.Generator, n: int, overconfidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Errors e ~ N(0, s^2) with a per-voxel s, and an sd map that under-states s by `overconfidence`."""
    s = rng.uniform(0.01, 0.1, n)
    return rng.normal(0.0, s), s / overconfidence


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_calibrated_intervals_cover_the_level_on_new_data_where_the_raw_sd_does_not(level):
    rng = np.random.default_rng(0)
    error, sd = heteroscedastic(rng, 20_000, overconfidence=15.0)
    scale = fit_group(np.abs(error), sd, (level,))
    calibration = Calibration({"t2/synthesis": scale}, 0.5, 8, (level,))
    new_error, new_sd = heteroscedastic(rng, 50_000, overconfidence=15.0)
    mean = rng.normal(size=new_error.size)
    target = mean + new_error
    low, high, calibrated_sd = calibration.interval(mean, new_sd, "t2", ("us",), level)
    coverage = np.mean((target >= low) & (target <= high))
    assert abs(coverage - level) < 0.01
    raw_low, raw_high = gaussian_interval(mean, new_sd, level)
    assert np.mean((target >= raw_low) & (target <= raw_high)) < level - 0.3  # 15x overconfident
    # mean +- z * calibrated sd is the interval, so the calibrated sd is ~15x the raw one here
    assert 10 < np.median(calibrated_sd / new_sd) < 20


def test_a_degenerate_sd_falls_back_to_a_quantile_of_the_absolute_error():
    rng = np.random.default_rng(1)
    error = np.abs(rng.normal(0, 0.05, 10_000))
    scale = fit_group(error, np.zeros_like(error), (0.9,))
    assert scale.mode == "absolute"
    assert scale.quantiles["0.9"] == pytest.approx(np.quantile(error, 0.9), rel=0.02)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 11.0)  # 10 scores: ceil(11 * 0.9) = 10th smallest
    assert conformal_quantile(scores, 0.9) == 10.0
    assert conformal_quantile(scores, 0.5) == 6.0
    with pytest.raises(InputError, match="cannot give"):
        conformal_quantile(scores, 0.95)


def test_too_few_voxels_and_unknown_levels_are_refused():
    with pytest.raises(InputError, match="calibration voxels"):
        fit_group(np.ones(10), np.ones(10), (0.9,))
    scale = fit_group(np.ones(2000), np.ones(2000), (0.9,))
    with pytest.raises(InputError, match="no interval at level 0.85"):
        scale.half_width(np.ones(3), 0.85)


def test_a_calibration_round_trips_through_plain_values():
    scale = fit_group(np.linspace(0, 1, 2000), np.full(2000, 0.1), (0.9,))
    calibration = Calibration({"us/harmonisation": scale}, 0.5, 8, (0.9,), {"data": "cal"})
    again = Calibration.from_dict(calibration.to_dict())
    assert again == calibration


def test_an_input_subsets_own_scale_is_used_and_its_task_stands_in_for_a_subset_without_one():
    rng = np.random.default_rng(2)
    wide, narrow = fit_group(np.abs(rng.normal(0, 1.0, 5000)), np.ones(5000), (0.9,)), \
        fit_group(np.abs(rng.normal(0, 0.1, 5000)), np.ones(5000), (0.9,))
    calibration = Calibration({"t2/synthesis": wide}, 0.5, 8, (0.9,), subsets={"t2/us+flair": narrow})
    assert calibration.scale("t2", ("us", "flair")) is narrow
    assert calibration.scale("t2", ("us",)) is wide
    with pytest.raises(InputError, match="no scale for t2 \\(harmonisation\\)"):
        calibration.scale("t2", ("t2",))
    assert Calibration.from_dict(calibration.to_dict()) == calibration
