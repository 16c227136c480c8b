"""What the image-space baselines share (MM-GAN, ResViT, M2DN): one generator reads all M modalities stacked as
channels, zeros (M2DN: noise) for the missing ones, and returns all M modalities ("unification by zero
imputation", Section 4.3 of the paper).

`ZeroImputationGenerator` gives such a generator the inference interface of `MMHVAE` (`encode` then `decode`,
returning an `MMHVAEOutput` with no KL), so `predict`, `evaluate` and the studies use it unchanged, and
`train.ZeroImputationGANModule` trains any of them. A subclass only builds its network and implements
`generate`. MM-GAN and ResViT are deterministic; M2DN (model/m2dn.py) samples, from the noise generator that
`decode` is given. Temperature is MMHVAE's and has no effect on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmhvae.model.distributions import RowNoise
from mmhvae.model.interface import EncodedImages, MMHVAEOutput


def config_checker(config: Any, variant: str) -> Callable[[bool, str], None]:
    """`check(condition, problem)` for a generator configuration dataclass, which raises its one-line error,
    after the checks every one needs: its variant, at least one modality, none twice (`modalities` becomes a
    tuple)."""
    name = type(config).__name__

    def check(condition: bool, problem: str) -> None:
        if not condition:
            raise ValueError(f"{name}: {problem}")

    config.modalities = tuple(config.modalities)
    check(config.variant == variant, f"variant must be '{variant}', got {config.variant!r}")
    check(len(config.modalities) > 0, "at least one modality is needed")
    check(len(set(config.modalities)) == len(config.modalities), f"duplicate modalities {config.modalities}")
    return check


class ZeroImputationGenerator(nn.Module):
    """[B, M, H, W] with zeros for missing modalities -> all M images in [-1, 1] (see the module docstring).

    Subclasses name their configuration dataclass (`config_class`, with `modalities`, `image_size` and
    `variant`), keep an instance in `self.config` and implement `generate`.
    """

    config: Any
    config_class: type  # the configuration dataclass of the subclass (has `from_dict`)
    # Inference on CPUs is faster in channels-last for the zero-imputation network, M2DN and MMHVAE, not for
    # MM-GAN or ResViT, which override it (README, Performance; `benchmarks/bench_kernels.py`).
    cpu_inference_channels_last = True

    def generate(self, inputs: Tensor, subset: Tensor, generator: torch.Generator | RowNoise | None = None
                 ) -> Tensor:
        """All M images in [-1, 1] from the M input channels, zeros where a modality is not in `subset` ([B, M]
        bool); `generator` feeds the generators that draw noise (M2DN)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Any | Mapping[str, Any]) -> ZeroImputationGenerator:
        return cls(cls.config_class.from_dict(config) if isinstance(config, Mapping) else config)

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

        Temperature, sample and kl exist for interface compatibility with MMHVAE; `generator` feeds the noise
        of a stochastic generator (M2DN) and is ignored by the deterministic ones.
        """
        subset = self._check_mask(subset, features.batch_size, "subset")
        if not isinstance(features, EncodedImages):
            raise ValueError(f"{type(self).__name__}.decode needs features from its encode (they hold the images)")
        if bool((subset & ~features.present).any()):
            raise ValueError("subset selects a modality that was not encoded (not in `present`)")
        inputs = torch.where(subset[:, :, None, None], features.images, torch.zeros_like(features.images))
        return MMHVAEOutput(images=self.generate(inputs, subset, generator), kl=[], kl_groups=(), z1_mean=None)

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
