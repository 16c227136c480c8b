"""The training objective (training/objective.py) on small fixed batches, against values computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmhvae.config import TrainConfig
from mmhvae.training.objective import (
    gan_weight,
    kl_weight,
    m2dn_losses,
    mmhvae_losses,
    with_adversarial_term,
    zero_imputation_losses,
)


def fixed_batch():
    """Two rows, M = 2 modalities of 2 x 3 pixels. Images are 0; each target is constant, so the per-pixel
    errors are: squared [[1, 4], [1, 9]], absolute [[1, 2], [1, 3]]. Row 1 has no second modality."""
    images = torch.zeros(2, 2, 2, 3)
    levels = torch.tensor([[1.0, 2.0], [-1.0, 3.0]])
    targets = levels[:, :, None, None].expand(2, 2, 2, 3).clone()
    observed = torch.tensor([[True, True], [True, False]])
    weights = torch.tensor([1.0, 0.5])  # train.image_loss_weights: the second modality counts half
    return images, targets, observed, weights


def critic_scores():
    """Scores of two modalities' critics: 0 everywhere (LSGAN term 0.5) and 3 everywhere (LSGAN term 2)."""
    return [torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 3.0)]


def test_eq19_sums_observed_modalities_and_divides_the_kl_by_pixels_times_modalities():
    """The normalisation of runs saved before train.kl_normalisation existed, by its name."""
    images, targets, observed, weights = fixed_batch()
    kl_total = torch.tensor([12.0, 36.0])  # mean 24 nats over H x W x M = 12 image values
    losses = mmhvae_losses(images, targets, observed, kl_total, weights, "l2", kl_factor=0.25,
                           kl_normalisation="modality_pixels")
    assert list(losses) == ["image", "kl", "kl_weight", "total"]
    # weighted squared errors [[1, 2], [1, 4.5]]; observed sums 3 and 1; mean over rows 2
    assert losses["image"].item() == pytest.approx(2.0)
    assert losses["kl"].item() == pytest.approx(2.0)
    assert losses["kl_weight"].item() == pytest.approx(0.25)
    assert losses["total"].item() == pytest.approx(2.0 + 0.25 * 2.0)
    l1 = mmhvae_losses(images, targets, observed, kl_total, weights, "l1", kl_factor=0.25,
                       kl_normalisation="modality_pixels")
    assert l1["image"].item() == pytest.approx((1 + 1 + 1) / 2)  # weighted [[1, 1], [1, 1.5]], observed


def test_eq19_per_image_pixel_is_the_default_and_weighs_the_kl_m_times_the_old_normalisation():
    images, targets, observed, weights = fixed_batch()
    losses = mmhvae_losses(images, targets, observed, torch.tensor([12.0, 36.0]), weights, "l2", kl_factor=0.25,
                           kl_normalisation="image_pixels")
    assert losses["image"].item() == pytest.approx(2.0)  # as before: the per-pixel means of the observed images
    assert losses["kl"].item() == pytest.approx(24 / 6)  # nats per image pixel, H x W = 6
    assert losses["total"].item() == pytest.approx(2.0 + 0.25 * 4.0)
    assert TrainConfig().kl_normalisation == "image_pixels"
    torch.manual_seed(0)  # M = 4 modalities of 5 x 7 pixels, some unobserved
    images, targets = torch.randn(6, 4, 5, 7), torch.randn(6, 4, 5, 7)
    observed, kl_total, weights = torch.rand(6, 4) > 0.3, torch.rand(6) * 100, torch.ones(4)
    ratios = {}
    for normalisation in ("image_pixels", "modality_pixels"):
        terms = mmhvae_losses(images, targets, observed, kl_total, weights, "l2", 1e-3, normalisation)
        ratios[normalisation] = (terms["kl"] / terms["image"]).item()
    assert ratios["image_pixels"] / ratios["modality_pixels"] == pytest.approx(4, rel=1e-6)
    with pytest.raises(ValueError, match="kl_normalisation"):
        mmhvae_losses(images, targets, observed, kl_total, weights, "l2", 1e-3, "per_voxel")


def test_the_gan_term_of_eq16_is_added_at_its_weight():
    images, targets, observed, weights = fixed_batch()
    losses = mmhvae_losses(images, targets, observed, torch.zeros(2), weights, "l2", kl_factor=1.0,
                           kl_normalisation="image_pixels")
    losses = with_adversarial_term(losses, critic_scores(), "lsgan", weight=0.1)
    assert list(losses) == ["image", "kl", "kl_weight", "total", "gan"]
    assert losses["gan"].item() == pytest.approx(0.5 + 2.0)
    assert losses["total"].item() == pytest.approx(2.0 + 0.1 * 2.5)
    paper = with_adversarial_term(mmhvae_losses(images, targets, observed, torch.zeros(2), weights, "l2", 1.0,
                                                "image_pixels"), critic_scores(), "paper", weight=0.1)
    assert paper["gan"].item() == pytest.approx(0.0 + 3.0)  # Eq. 16 as written: E[d(fake)]


def test_zero_imputation_loss_mixes_the_observed_mean_l1_and_the_lsgan_term():
    images, targets, observed, weights = fixed_batch()
    l1 = zero_imputation_losses(images, targets, observed, weights, "l1", None, "lsgan", weight=0.0)
    assert list(l1) == ["image", "total"]
    assert l1["image"].item() == pytest.approx((1 + 1 + 1) / 3) and l1["total"] is l1["image"]
    losses = zero_imputation_losses(images, targets, observed, weights, "l2", critic_scores(), "lsgan", weight=0.1)
    assert list(losses) == ["image", "total", "gan"]
    assert losses["image"].item() == pytest.approx((1 + 2 + 1) / 3)
    assert losses["gan"].item() == pytest.approx((2 * 0.5 + 2 * 2.0) / 2)  # MSELoss scale, mean over modalities
    assert losses["total"].item() == pytest.approx(0.9 * 4 / 3 + 0.1 * 2.5)


def test_m2dn_loss_is_the_mean_error_over_observed_images():
    images, targets, observed, weights = fixed_batch()
    losses = m2dn_losses(images, targets, observed, weights, "l1")
    assert list(losses) == ["image", "total"]
    assert losses["image"].item() == pytest.approx(1.0) and losses["total"] is losses["image"]
    nothing = m2dn_losses(images, targets, torch.zeros_like(observed), weights, "l1")
    assert nothing["image"].item() == 0.0  # no observed image: no loss, not a division by zero


def test_weight_schedules_warm_up_the_kl_and_switch_the_gan_on_late():
    schedule = SimpleNamespace(kl_weight=1e-3, kl_warmup=0.1, gan_weight=0.025, gan_start=0.8, max_steps=100)
    assert [kl_weight(step, schedule) for step in (0, 4, 9, 50)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3])
    assert gan_weight(79, schedule) == 0.0 and gan_weight(80, schedule) == 0.025
    no_warmup = SimpleNamespace(**{**vars(schedule), "kl_warmup": 0.0, "gan_weight": 0.0, "gan_start": 0.0})
    assert kl_weight(0, no_warmup) == 1e-3 and gan_weight(0, no_warmup) == 0.0
