"""The training objective as pure functions of tensors: Eq. 19 for MMHVAE, its KL and GAN schedules, and the
losses of the zero-imputation GANs and of M2DN.

No Lightning and no module state here: the Lightning modules (module.py, baseline_modules.py) run the networks
and the critics, then hand their outputs to these functions, so each loss can be checked on a fixed batch.
The adversarial losses of one critic, Eq. 15 for the critic and Eq. 16 for the generator (LSGAN by default,
`train.gan_loss: paper` for the paper's form), are in model/critic.py.

Shapes: a training step decodes R = T x B rows (T draws of the input subset for a batch of B slices, pass-major),
each with M modality images of H x W pixels. `observed` [R, M] marks the modalities observed in the slice's
pattern r: only those have a target to score against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmhvae.config import TrainConfig
from mmhvae.model.critic import generator_loss


def kl_weight(step: int, config: TrainConfig) -> float:
    """KL weight with a linear warm-up over the first `kl_warmup` fraction of training."""
    warmup = config.kl_warmup * config.max_steps
    return config.kl_weight * (1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup))


def gan_weight(step: int, config: TrainConfig) -> float:
    """0 for the first `gan_start` fraction of training, then `gan_weight` (Section 4.2)."""
    return config.gan_weight if config.gan_weight > 0 and step >= config.gan_start * config.max_steps else 0.0


def image_error(prediction: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample, per-modality mean error over pixels: [N, M]. `kind` "l2": squared error, "l1": absolute."""
    error = (prediction - target) ** 2 if kind == "l2" else (prediction - target).abs()
    return error.flatten(2).mean(dim=2)


def weighted_image_error(prediction: Tensor, target: Tensor, kind: str, modality_weights: Tensor) -> Tensor:
    """`image_error` times each modality's factor (`train.image_loss_weights`, [M]): [N, M]."""
    return image_error(prediction, target, kind) * modality_weights.to(target)


def mean_over_observed(errors: Tensor, observed: Tensor) -> Tensor:
    """Mean of [R, M] errors over the observed (row, modality) pairs: MM-GAN's L1 over the scored channels."""
    return (errors * observed).sum() / observed.sum().clamp(min=1)


def mmhvae_losses(images: Tensor, targets: Tensor, observed: Tensor, kl_total: Tensor, modality_weights: Tensor,
                  image_loss: str, kl_factor: float, kl_normalisation: str) -> dict[str, Tensor]:
    """The objective of Eq. 19, averaged over the batch and the T draws: {"image", "kl", "kl_weight", "total"}.

    images, targets [R, M, H, W]; observed [R, M]; kl_total [R], the KL of each row summed over latent levels.
    Eq. 19 divided by the H x W pixels of an image: the image term sums, over the modalities observed in r
    (Eq. 9: the reconstructed ones of r' and the synthesised ones of r minus r'), each modality's per-pixel
    mean error, and the KL is divided by H x W (`kl_normalisation` "image_pixels"); "modality_pixels" divides
    it by H x W x M instead, as runs saved before the choice existed did (an effective KL weight M times
    smaller). `kl_factor` is the warmed-up weight lambda_KL of `kl_weight`.
    """
    errors = weighted_image_error(images, targets, image_loss, modality_weights)
    image = (errors * observed).sum(dim=1).mean()
    kl = kl_total.mean() / kl_pixels(images.shape, kl_normalisation)
    losses = {"image": image, "kl": kl, "kl_weight": torch.tensor(kl_factor)}
    losses["total"] = image + losses["kl_weight"] * kl
    return losses


def kl_pixels(shape: Sequence[int], kl_normalisation: str) -> int:
    """What the KL of a row of images [.., M, H, W] is divided by (train.kl_normalisation)."""
    pixels = shape[-1] * shape[-2]
    if kl_normalisation == "image_pixels":
        return pixels
    if kl_normalisation == "modality_pixels":
        return pixels * shape[-3]
    raise ValueError(f"unknown kl_normalisation {kl_normalisation!r} (image_pixels or modality_pixels)")


def adversarial_term(fake_scores: Sequence[Tensor], kind: str) -> Tensor:
    """Eq. 16: every modality's synthesis should look real to its critic; summed over the modalities.

    `fake_scores` holds, per modality j, its critic's scores of the synthesised images of j."""
    return sum(generator_loss(scores, kind) for scores in fake_scores)


def with_adversarial_term(losses: dict[str, Tensor], fake_scores: Sequence[Tensor], kind: str,
                          weight: float) -> dict[str, Tensor]:
    """MMHVAE's losses (a new dict) with the GAN term of Eq. 16 as "gan", added to the total at `weight`
    (Section 4.2)."""
    gan = adversarial_term(fake_scores, kind)
    return {**losses, "total": losses["total"] + weight * gan, "gan": gan}


def zero_imputation_losses(images: Tensor, targets: Tensor, observed: Tensor, modality_weights: Tensor,
                           image_loss: str, fake_scores: Sequence[Tensor] | None, gan_kind: str,
                           weight: float) -> dict[str, Tensor]:
    """MM-GAN's and ResViT's generator loss, (1 - w) L1 + w LSGAN: {"image", "total"} and, with scores, "gan".

    The image term is the mean error over every observed (row, modality), synthesised and reconstructed alike.
    `fake_scores` (None when w = 0) are the critics' scores per modality, as for `adversarial_term`.
    """
    image = mean_over_observed(weighted_image_error(images, targets, image_loss, modality_weights), observed)
    losses = {"image": image, "total": image}
    if fake_scores is not None:
        # critic.py's LSGAN carries a factor 1/2 that MM-GAN's and ResViT's MSELoss do not; their single
        # critic averages over channels, so the per-modality terms are averaged.
        losses["gan"] = sum(2 * generator_loss(scores, gan_kind) for scores in fake_scores) / len(fake_scores)
        losses["total"] = (1 - weight) * image + weight * losses["gan"]
    return losses


def m2dn_losses(prediction: Tensor, targets: Tensor, observed: Tensor, modality_weights: Tensor,
                image_loss: str) -> dict[str, Tensor]:
    """M2DN's denoising loss: the error between the predicted and the harmonised images of the observed
    modalities, averaged over the observed (row, modality) pairs; no adversarial term. {"image", "total"}."""
    image = mean_over_observed(weighted_image_error(prediction, targets, image_loss, modality_weights), observed)
    return {"image": image, "total": image}
