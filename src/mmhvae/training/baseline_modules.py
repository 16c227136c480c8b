"""The Lightning modules of the baselines that are not MMHVAE configurations: the zero-imputation GANs
(MM-GAN, ResViT) and the Brownian-bridge diffusion M2DN. Each replaces only `MMHVAEModule`'s generator step
(and the generator's optimiser); their losses are in objective.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmhvae.modalities import Subset, subset_from_code
from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS
from mmhvae.training.module import MMHVAEModule, trained_parameters
from mmhvae.training.objective import gan_weight, m2dn_losses, zero_imputation_losses


class ZeroImputationGANModule(MMHVAEModule):
    """The zero-imputation GANs, MM-GAN (Sharma & Hamarneh, IEEE TMI 2019) and ResViT (Dalmaz et al., IEEE TMI
    2022), trained with the machinery of `MMHVAEModule`: same data module, per-modality critics and their
    update, memory of real images, EMA, checkpoints, exact resume, logging and validation. Only the network,
    the generator's optimiser and the generator step differ.

    One step: T = train.passes input subsets of the batch's observed modalities (T draws so that every method
    sees as many (slice, input subset) pairs per step), drawn from MMHVAE's p_alpha(r' | r) (Section 4.3: the
    same sample selection for all methods), or with `train.subset_sampling: own` uniformly over the non-empty
    subsets (MM-GAN's random input dropping); zeros for the dropped modalities; loss (1 - w) L1 + w LSGAN with w =
    train.gan_weight (MM-GAN: lambda = 0.9 on L1, 0.1 adversarial; ResViT: 100 on L1, 1 adversarial; both
    from the first step), the L1 averaged over every observed modality (synthesised and reconstructed, as
    ResViT's unified model), the adversarial term over all modalities. Then the critics' update of Algorithm 1
    (lines 27-35), as for MMHVAE.
    """

    adam_betas = (0.5, 0.999)  # MM-GAN's and ResViT's

    def __init__(self, run: dict[str, Any]):
        super().__init__(run)
        if not isinstance(self.model, ZeroImputationGenerator):
            raise ValueError("ZeroImputationGANModule needs a run whose model section is a zero-imputation "
                             f"generator (variant: {' or '.join(ZERO_IMPUTATION_NETWORKS)})")

    def configure_optimizers(self):
        train = self.run_config.train
        # The method's Adam (MM-GAN and ResViT: betas (0.5, 0.999)) for the generator (MMHVAE: Adamax); the critic
        # optimiser and the step-wise cosine schedule (constant when lr_final == lr) are MMHVAE's.
        generator = torch.optim.Adam(trained_parameters(self.model), lr=train.lr, betas=self.adam_betas)
        critic = torch.optim.Adam(self.critics.parameters(), lr=train.critic_lr, betas=(0.5, 0.999))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(generator, T_max=max(1, train.max_steps),
                                                            eta_min=train.lr_final)
        return [generator, critic], [{"scheduler": cosine, "interval": "step"}]

    def sample_input_subsets(self, observed: Subset, passes: int) -> list[Subset]:
        """T input subsets: MMHVAE's draws from p_alpha (`train.subset_sampling: mixture`), or each uniform
        over the non-empty subsets of the batch's observed modalities (`own`)."""
        if self.run_config.train.subset_sampling == "mixture":
            return super().sample_input_subsets(observed, passes)
        codes = self.rng.integers(1, 2 ** len(observed), size=passes)
        return [subset_from_code(observed, code) for code in codes.tolist()]

    def generator_losses(self, batch: dict[str, Tensor], subsets: Tensor) -> dict[str, Tensor]:
        """The generator loss, (1 - w) L1 + w LSGAN, averaged over the batch and the T input subsets."""
        train = self.run_config.train
        output, rows = self.decode_passes(batch, subsets)
        weight = gan_weight(self.global_step, train)
        scores = self.critic_scores(output.images) if weight > 0 else None
        losses = zero_imputation_losses(output.images, batch["targets"][rows], batch["present"].bool()[rows],
                                        self.image_loss_weights, train.image_loss, scores, train.gan_loss, weight)
        losses["fake"] = output.images.detach()
        return losses


class M2DNModule(ZeroImputationGANModule):
    """M2DN (model/m2dn.py) trained with the same machinery: T = train.passes input subsets of the batch's
    observed modalities per step, drawn as for MM-GAN; for each (slice, subset) one denoising task at a random
    step of the Brownian bridge, scored by the L1 between the predicted and the harmonised images of the
    observed modalities. No adversarial term (its recipe sets train.gan_weight 0, so the critics rest)."""

    adam_betas = (0.9, 0.999)  # torch's default, as BBDM's

    def generator_losses(self, batch: dict[str, Tensor], subsets: Tensor) -> dict[str, Tensor]:
        """The denoising loss of one random bridge step per (slice, subset) row (objective.m2dn_losses)."""
        train = self.run_config.train
        inputs, targets, present = batch["inputs"], batch["targets"], batch["present"].bool()
        passes, size = subsets.shape[0], inputs.shape[0]
        rows = torch.arange(size, device=inputs.device).repeat(passes)
        observed = present[rows]
        # The bridge needs an x_0 for every modality: 0 where the slice has no image (never scored).
        x0 = torch.where(observed[:, :, None, None], targets[rows], torch.zeros_like(targets[rows]))
        # Inputs outside a row's subset are replaced by noise (M2DN.bridge_end), absent ones included.
        prediction = self.model.training_prediction(inputs[rows], subsets.repeat_interleave(size, dim=0), x0,
                                                    generator=self.latent_generator(inputs.device))
        losses = m2dn_losses(prediction, targets[rows], observed, self.image_loss_weights, train.image_loss)
        losses["fake"] = prediction.detach()
        return losses
