"""M2DN baseline (Meng et al., "Multi-modal modality-masked diffusion network for brain MRI synthesis with random
modality missing", IEEE TMI 2024), the "M2DN [36]" row of the paper's Table I, as the paper adapted it (Section
4.3): "M2DN applies a diffusion model with binary conditional codes to specify different imputation tasks. The
unification strategy consists of concatenating all images and replacing missing ones with random noise. During
the reverse diffusion step, the modalities are progressively reconstructed. To additionally perform
harmonization, we adapted the original method using the Brownian bridge diffusion framework [46]", with 18
inference steps (Section 5.1).

So: a Brownian bridge (BBDM, Li et al., CVPR 2023; `distributions.bridge_*`) runs from x_0, the M harmonised
images, at t = 0 to y at t = T, where y holds the input images of the subset and standard normal noise for the
other modalities. A U-Net reads x_t (all M channels), the step t and the subset's binary code, and predicts x_0
(M2DN predicts images, not noise). Training: t uniform in 1..T, x_t from the bridge's marginal, L1 on the
observed modalities (`M2DNModule`, training/baseline_modules.py). Inference: `sampling_steps` evenly spaced
reverse steps from x_T = y, each drawing x_s from q(x_s | x_t, x_0 predicted, y).

Choices where neither paper fixes one (M2DN's code is not public): the U-Net is MONAI's DiffusionModelUNet
(group norm, attention at the coarsest level), and the binary code enters as a learnt embedding of the subset
added to the time embedding (M2DN concatenates the code to its bottleneck features); the bridge's variance scale
is BBDM's s = 1, with T = 1000 training steps. Noise for missing modalities and every reverse step comes from
the generator `decode` is given (per-row RowNoise at inference), so outputs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
from mmhvae.model.distributions import RowNoise, bridge_marginal, bridge_step, standard_normal_like
from mmhvae.model.interface import PlainDictConfig, config_checker
from mmhvae.model.mmhvae_config import MMHVAEConfig

VARIANT = "m2dn"


@dataclass
class M2DNConfig(PlainDictConfig):
    """Architecture and bridge of the M2DN baseline. Round-trips through a plain dict whose `variant` is "m2dn"."""

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    image_size: int = 64
    # U-Net channels per level, finest first; a stride-2 downsampling between levels; attention at the last.
    channels: tuple[int, ...] = (16, 32, 64, 64)
    res_blocks: int = 2
    head_channels: int = 16
    norm_groups: int = 8
    train_steps: int = 1000  # T of the bridge
    sampling_steps: int = 18  # reverse steps at inference (Section 5.1)
    bridge_scale: float = 1.0  # BBDM's s: the bridge's variance 2 s (m - m^2) peaks at s / 2
    variant: str = VARIANT

    def __post_init__(self) -> None:
        check = config_checker(self, VARIANT)
        self.channels = tuple(int(c) for c in self.channels)
        check(len(self.channels) >= 2 and all(c > 0 and c % self.norm_groups == 0 for c in self.channels),
              f"channels {self.channels}: at least two levels, each a multiple of norm_groups {self.norm_groups}")
        levels = len(self.channels) - 1
        check(self.image_size % 2**levels == 0, f"image_size {self.image_size} must be divisible by 2**{levels}")
        check(self.channels[-1] % self.head_channels == 0, "the last level's channels must divide by head_channels")
        check(self.res_blocks >= 1 and self.train_steps >= 2, "res_blocks >= 1 and train_steps >= 2 are needed")
        check(1 <= self.sampling_steps <= self.train_steps, "sampling_steps must be in 1..train_steps")
        check(self.bridge_scale > 0, "bridge_scale must be positive")

    @classmethod
    def like(cls, config: MMHVAEConfig, **overrides: Any) -> M2DNConfig:
        """The M2DN for an MMHVAE configuration: same modalities and grid, four U-Net levels twice as wide as one
        MMHVAE encoder's (as MM-GAN's U-Net). At the paper setting (32, 64, 128, 256) with two residual blocks
        per level, 26 GMACs per network evaluation (the paper quotes 24 G for M2DN); below it (tiny: 16, 32,
        64, 64) one block per level, so that it trains on a CPU in minutes like the other baselines."""
        widths = tuple(2 * config.features(level) for level in range(min(4, config.num_pool + 1)))
        settings: dict[str, Any] = dict(modalities=config.modalities, image_size=config.image_size, channels=widths,
                                        head_channels=min(32, widths[-1]),
                                        res_blocks=2 if config.base_features >= 16 else 1)
        settings.update(overrides)
        return cls(**settings)


def subset_codes(subset: Tensor) -> Tensor:
    """The binary code of each row's subset as an integer, sum_j 2^j [j in subset]: [B] long."""
    powers = 2 ** torch.arange(subset.shape[1], device=subset.device)
    return (subset.long() * powers).sum(dim=1)


class M2DN(ZeroImputationGenerator):
    """M2DN as adapted by the paper: a conditional Brownian-bridge diffusion over all M images (module docstring)."""

    config_class = M2DNConfig

    def __init__(self, config: M2DNConfig):
        super().__init__()
        # Imported here because importing MONAI takes seconds (as in model/baselines/mmgan.py).
        from monai.networks.nets import DiffusionModelUNet

        self.config = config
        m = len(config.modalities)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=m, out_channels=m, num_res_blocks=config.res_blocks,
            channels=config.channels, attention_levels=(False,) * (len(config.channels) - 1) + (True,),
            norm_num_groups=config.norm_groups, num_head_channels=config.head_channels,
            num_class_embeds=2**m)  # one embedding per binary code (subset)

    def predict_images(self, x_t: Tensor, steps: Tensor, subset: Tensor) -> Tensor:
        """x_0 predicted from x_t at integer steps `steps` ([B]) for each row's input subset, in [-1, 1]."""
        # float32 out of bf16 autocast: the bridge's arithmetic stays in full precision (as the Gaussian maths).
        return torch.tanh(self.unet(x_t, timesteps=steps, class_labels=subset_codes(subset)).float())

    def bridge_end(self, inputs: Tensor, subset: Tensor, generator: torch.Generator | RowNoise | None) -> Tensor:
        """y: the subset's input images, standard normal noise for the other modalities."""
        return torch.where(subset[:, :, None, None], inputs, standard_normal_like(inputs, generator))

    def training_prediction(self, inputs: Tensor, subset: Tensor, targets: Tensor,
                            generator: torch.Generator | None = None) -> Tensor:
        """One denoising task per row: t uniform in 1..T, x_t ~ q(x_t | x_0 = targets, y), the predicted x_0."""
        y = self.bridge_end(inputs, subset, generator)
        steps = torch.randint(1, self.config.train_steps + 1, (inputs.shape[0],), generator=generator,
                              device=inputs.device)
        m = (steps.float() / self.config.train_steps)[:, None, None, None]
        x_t = bridge_marginal(targets, y, m, self.config.bridge_scale).sample(generator=generator)
        return self.predict_images(x_t, steps, subset)

    def generate(self, inputs: Tensor, subset: Tensor, generator: torch.Generator | RowNoise | None = None
                 ) -> Tensor:
        """`sampling_steps` reverse steps of the bridge from x_T = y; returns the last predicted x_0."""
        config = self.config
        y = self.bridge_end(inputs, subset, generator)
        schedule = torch.linspace(config.train_steps, 0, config.sampling_steps + 1).round().long().tolist()
        x = y
        for t, s in zip(schedule[:-1], schedule[1:]):
            images = self.predict_images(x, torch.full((x.shape[0],), t, device=x.device), subset)
            if s == 0:
                return images
            mean, variance = bridge_step(x, images, y, t / config.train_steps, s / config.train_steps,
                                         config.bridge_scale)
            x = mean + variance.sqrt() * standard_normal_like(mean, generator)
        raise AssertionError("the schedule ends at step 0")
