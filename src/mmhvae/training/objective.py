"""TODO docstring."""

from __future__ import annotations

from torch import Tensor


def kl_weight(step: int, config) -> float:
    """KL weight with a linear warm-up over the first `kl_warmup` fraction of training."""
    warmup = config.kl_warmup * config.max_steps
    return config.kl_weight * (1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup))


def gan_weight(step: int, config) -> float:
    """0 for the first `gan_start` fraction of training, then `gan_weight` (Section 4.2)."""
    return config.gan_weight if config.gan_weight > 0 and step >= config.gan_start * config.max_steps else 0.0


def image_error(prediction: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample, per-modality mean error over pixels: [N, M]."""
    error = (prediction - target) ** 2 if kind == "l2" else (prediction - target).abs()
    return error.flatten(2).mean(dim=2)
