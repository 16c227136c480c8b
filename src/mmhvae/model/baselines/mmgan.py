"""MM-GAN baseline (Sharma & Hamarneh, "Missing MRI pulse sequence synthesis using multi-modal generative
adversarial network", IEEE TMI 2019), the "MM-GAN [14]" row of the paper's Table I (Section 4.3).

A U-Net generator reads all M modalities stacked as channels, zeros for the missing ones ("zero imputation"),
and returns all M modalities. It is trained with random input dropping, an L1 loss and a PatchGAN critic
(LSGAN), weighted 0.9 / 0.1 as in MM-GAN; see `ZeroImputationGANModule` (training/baseline_modules.py) and
MM-GAN's recipe in methods.py (`METHOD_TRAIN_RECIPES`). The U-Net is MONAI's.

Differences from the original, all deliberate: the output for an input modality is the network's own
(harmonised) image, not the input copied back ("implicit conditioning"), because our targets are harmonised
images (the harmonisation task of Table I); critics are our per-modality PatchGAN critics (`model/critic.py`).

The network has the interface of every synthesis network (model/interface.py) through `ZeroImputationGenerator`
(model/baselines/zero_imputation.py), shared with ResViT and M2DN; it is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
from mmhvae.model.interface import PlainDictConfig, config_checker
from mmhvae.model.mmhvae_config import MMHVAEConfig

VARIANT = "mmgan"


@dataclass
class MMGANConfig(PlainDictConfig):
    """Architecture of the MM-GAN generator (a MONAI U-Net). Round-trips through a plain dict whose
    `variant` is "mmgan" (how a model file or a run's config.yaml tells it from MMHVAE)."""

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    image_size: int = 64
    # Channels per U-Net level, finest first; one stride-2 downsampling between consecutive levels.
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    # Residual units per level (MONAI's num_res_units; 0: plain convolutions).
    num_res_units: int = 2
    dropout: float = 0.0
    variant: str = VARIANT

    def __post_init__(self) -> None:
        check = config_checker(self, VARIANT)
        self.channels = tuple(int(c) for c in self.channels)
        check(len(self.channels) >= 2 and all(c > 0 for c in self.channels),
              f"channels needs at least two positive entries, got {self.channels}")
        levels = len(self.channels) - 1
        check(self.image_size % 2**levels == 0 and self.image_size // 2**levels >= 2,
              f"image_size {self.image_size} must be divisible by 2**{levels} and leave a map of at least 2x2")
        check(self.num_res_units >= 0, "num_res_units must be >= 0")
        check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")

    @classmethod
    def like(cls, config: MMHVAEConfig, **overrides: Any) -> MMGANConfig:
        """The MM-GAN matching an MMHVAE configuration: same modalities, grid and number of downsamplings,
        widths twice one MMHVAE encoder's (the U-Net has one encoder for all modalities where MMHVAE has M),
        which gives comparable parameter counts (tiny preset: about 0.45M against MMHVAE's 0.49M)."""
        widths = tuple(2 * config.features(level) for level in range(config.num_pool + 1))
        settings: dict[str, Any] = dict(modalities=config.modalities, image_size=config.image_size, channels=widths)
        settings.update(overrides)
        return cls(**settings)


class MMGAN(ZeroImputationGenerator):
    """MM-GAN generator: [B, M, H, W] with zeros for missing modalities -> all M images in [-1, 1]."""

    config_class = MMGANConfig
    cpu_inference_channels_last = False  # no faster on CPUs (docs/performance.md)

    def __init__(self, config: MMGANConfig):
        super().__init__()
        # Imported here because importing MONAI takes seconds (as in model/critic.py).
        from monai.networks.nets import UNet

        self.config = config
        m = len(config.modalities)
        self.unet = UNet(
            spatial_dims=2,
            in_channels=m,
            out_channels=m,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
            # Instance norm (not MM-GAN's batch norm): samples never influence each other, so a batch mixing
            # input subsets gives exactly what each sample gives alone, as for MMHVAE.
            norm="INSTANCE",
            dropout=config.dropout,
        )

    def generate(self, inputs: Tensor, subset: Tensor, generator=None) -> Tensor:
        return torch.tanh(self.unet(inputs))
