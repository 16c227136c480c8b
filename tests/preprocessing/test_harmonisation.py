from __future__ import annotations

import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.preprocessing.intensity import WM_MEDIAN_TARGETS, harmonise_target, normalise_input, target_to_network
from mmhvae.preprocessing.masks import (
    crop_to_fov,
    ultrasound_fov_mask,
    white_matter_by_clustering,
    white_matter_from_labels,
)


def tissue_volume(seed=0, wm=60.0, gm=90.0, csf=150.0, offset=20.0, scale=1.0):
    """A three-tissue volume (labels 1 CSF, 2 GM, 3 WM) with background 0 and noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((24, 24, 8), np.int64)
    labels[4:20, 4:20] = 2
    labels[8:16, 6:18] = 3
    labels[11:13, 10:14] = 1
    means = {0: 0.0, 1: csf, 2: gm, 3: wm}
    image = np.vectorize(means.get)(labels).astype(np.float32)
    image[labels > 0] = scale * (image[labels > 0] + offset + rng.normal(0, 3, (labels > 0).sum()))
    return image, labels


def test_input_normalisation_range_and_background():
    image, labels = tissue_volume()
    image[5, 5, 3] = 1e4  # an outlier above the 99.95th percentile is clipped
    out = normalise_input(image)
    assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == pytest.approx(1.0)
    assert np.all(out[labels == 0] == -1.0)
    assert out[5, 5, 3] == pytest.approx(1.0)


def test_input_normalisation_refuses_constant_images():
    with pytest.raises(InputError, match="constant"):
        normalise_input(np.zeros((4, 4, 4)))


@pytest.mark.parametrize("modality", ["t2", "t1c", "flair", "t1", "pd"])
@pytest.mark.parametrize("scale, offset", [(1.0, 20.0), (3.7, -5.0), (0.01, 300.0)])
def test_harmonisation_puts_the_wm_median_at_the_target(modality, scale, offset):
    image, labels = tissue_volume(scale=scale, offset=offset)
    wm = white_matter_from_labels(labels)
    out = harmonise_target(image, wm, modality, foreground=labels > 0)
    assert np.median(out[wm]) == pytest.approx(WM_MEDIAN_TARGETS[modality], rel=1e-5)
    assert out[labels > 0].min() == pytest.approx(0.0, abs=1e-6)
    assert np.all(out[labels == 0] == 0)


def test_paper_values_and_overrides():
    assert (WM_MEDIAN_TARGETS["t2"], WM_MEDIAN_TARGETS["t1c"], WM_MEDIAN_TARGETS["flair"]) == (1 / 7, 1 / 5, 1 / 3)
    image, labels = tissue_volume()
    out = harmonise_target(image, labels == 3, "t1", wm_targets={"t1": 0.5})
    assert np.median(out[labels == 3]) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(target_to_network(np.array([0.0, 0.5, 1.5])), [-1.0, 0.0, 2.0])


def test_two_sites_agree_after_harmonisation():
    site_a, labels = tissue_volume(seed=1, scale=1.0, offset=10)
    site_b, _ = tissue_volume(seed=1, scale=2.5, offset=40)
    wm, fg = labels == 3, labels > 0
    a, b = harmonise_target(site_a, wm, "t2", foreground=fg), harmonise_target(site_b, wm, "t2", foreground=fg)
    assert np.abs(a - b).max() < 0.05


def test_empty_white_matter_is_an_input_error():
    image, labels = tissue_volume()
    with pytest.raises(InputError, match="white-matter mask is empty"):
        harmonise_target(image, np.zeros_like(labels, bool), "t2")


@pytest.mark.parametrize("modality, wm, gm, csf", [("t1", 120, 80, 30), ("t2", 60, 90, 150), ("flair", 70, 100, 20)])
def test_clustering_finds_white_matter(modality, wm, gm, csf):
    image, labels = tissue_volume(wm=wm, gm=gm, csf=csf)
    mask = white_matter_by_clustering(image, modality, foreground=labels > 0)
    agreement = (mask == (labels == 3))[labels > 0].mean()
    assert agreement > 0.95


def test_fov_crop_and_fov_mask():
    us = np.zeros((10, 10, 3), np.float32)
    us[2:8, 2:8] = 5.0
    us[4:6, 4:6, 1] = 0.0  # an anechoic hole inside the fan stays in the FOV
    fov = ultrasound_fov_mask(us)
    assert fov[4, 4, 1] and fov[3, 3, 0] and not fov[0, 0, 0]
    mr = np.full((10, 10, 3), 7.0, np.float32)
    cropped = crop_to_fov(mr, fov, background=0.0)
    assert np.all(cropped[~fov] == 0) and np.all(cropped[fov] == 7.0)
