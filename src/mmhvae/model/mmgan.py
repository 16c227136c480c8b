"""MM-GAN baseline (Sharma & Hamarneh, "Missing MRI pulse sequence synthesis using multi-modal generative
adversarial network", IEEE TMI 2019), the "MM-GAN [14]" row of the paper's Table I (Section 4.3).

A U-Net generator reads all M modalities stacked as channels, zeros for the missing ones ("zero imputation"),
and returns all M modalities. It is trained with random input dropping, an L1 loss and a PatchGAN critic
(LSGAN), weighted 0.9 / 0.1 as in MM-GAN; see `mmhvae.train.MMGANModule`. The U-Net is MONAI's.

Differences from the original, all deliberate: the output for an input modality is the network's own
(harmonised) image, not the input copied back ("implicit conditioning"), because our targets are harmonised
images (the harmonisation task of Table I); critics are our per-modality PatchGAN critics (`model/critic.py`).

The network exposes the same inference interface as `MMHVAE` (`encode` then `decode`, returning an
`MMHVAEOutput` with no KL), so `predict` and `evaluate` use it unchanged. It is deterministic: temperature,
sampling and the latent generator are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmhvae.model.distributions import RowNoise
from mmhvae.model.mmhvae import EncodedImages, MMHVAEConfig, MMHVAEOutput, PlainDictConfig

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
        self.modalities = tuple(self.modalities)
        self.channels = tuple(int(c) for c in self.channels)

        def check(condition: bool, problem: str) -> None:
            if not condition:
                raise ValueError(f"MMGANConfig: {problem}")

        check(self.variant == VARIANT, f"variant must be '{VARIANT}', got {self.variant!r}")
        check(len(self.modalities) > 0, "at least one modality is needed")
        check(len(set(self.modalities)) == len(self.modalities), f"duplicate modalities {self.modalities}")
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


class MMGAN(nn.Module):
    """MM-GAN generator: [B, M, H, W] with zeros for missing modalities -> all M images in [-1, 1]."""

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

    @classmethod
    def from_config(cls, config: MMGANConfig | Mapping[str, Any]) -> MMGAN:
        if not isinstance(config, MMGANConfig):
            config = MMGANConfig.from_dict(config)
        return cls(config)

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def num_modalities(self) -> int:
        return len(self.config.modalities)

    def encode(self, images: Tensor, present: Tensor) -> EncodedImages:
        """Keep the images (absent modalities zeroed; they may hold anything, NaN included): the generator's
        input depends on the subset, so the work happens in `decode`."""
        present = self._check_mask(present, images.shape[0], "present")
        if images.ndim != 4 or images.shape[1] != self.num_modalities:
            raise ValueError(f"images must be [B, {self.num_modalities}, H, W], got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"images must be {size}x{size}, got {tuple(images.shape[-2:])}")
        return EncodedImages.from_images(images, present)

    def decode(
        self,
        features: EncodedImages,
        subset: Tensor,
        temperature: float = 1.0,
        sample: bool = True,
        kl: str | None = None,
        generator: torch.Generator | RowNoise | None = None,
    ) -> MMHVAEOutput:
        """All modalities from the modalities in `subset` ([B, M] bool, rows may differ), zeros elsewhere.

        Deterministic: temperature, sample, kl and generator exist for interface compatibility with MMHVAE.
        """
        subset = self._check_mask(subset, features.batch_size, "subset")
        if bool((subset & ~features.present).any()):
            raise ValueError("subset selects a modality that was not encoded (not in `present`)")
        if not isinstance(features, EncodedImages):
            raise ValueError("MMGAN.decode needs features from MMGAN.encode (they hold the images)")
        inputs = torch.where(subset[:, :, None, None], features.images, torch.zeros_like(features.images))
        images = torch.tanh(self.unet(inputs))
        return MMHVAEOutput(images=images, kl=[], kl_groups=(), z1_mean=None)

    def forward(
        self,
        images: Tensor,
        present: Tensor,
        subset: Tensor | None = None,
        temperature: float = 1.0,
        sample: bool = True,
    ) -> MMHVAEOutput:
        """decode(encode(images, present), subset); subset defaults to all present modalities."""
        features = self.encode(images, present)
        return self.decode(features, features.present if subset is None else subset)

    def _check_mask(self, mask: Tensor, batch: int, name: str) -> Tensor:
        if mask.shape != (batch, self.num_modalities):
            raise ValueError(f"{name} must be [{batch}, {self.num_modalities}], got {tuple(mask.shape)}")
        return mask.to(torch.bool)
