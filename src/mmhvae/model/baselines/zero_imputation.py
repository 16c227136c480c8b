"""What the image-space baselines share (MM-GAN, ResViT, M2DN): one generator reads all M modalities stacked as
channels, zeros (M2DN: noise) for the missing ones, and returns all M modalities ("unification by zero
imputation", Section 4.3 of the paper).

`ZeroImputationGenerator` gives such a generator the interface of every synthesis network (model/interface.py:
`encode` then `decode`, here returning an `MMHVAEOutput` with no KL), so prediction, evaluation and the studies
use it unchanged, and `ZeroImputationGANModule` (training/baseline_modules.py) trains any of them. A subclass
only builds its network and implements `generate`. MM-GAN and ResViT are deterministic; M2DN
(model/baselines/m2dn.py) samples, from the noise generator that `decode` is given. Temperature is MMHVAE's and
has no effect on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmhvae.model.distributions import RowNoise
from mmhvae.model.interface import EncodedImages, EncodedModalities, MMHVAEOutput, SynthesisNetwork, zero_outside


class ZeroImputationGenerator(SynthesisNetwork):
    """[B, M, H, W] with zeros for missing modalities -> all M images in [-1, 1] (see the module docstring).

    Subclasses name their configuration dataclass (`config_class`, with `modalities`, `image_size` and
    `variant`), keep an instance in `self.config` and implement `generate`.
    """

    # Inference on CPUs is faster in channels-last for the zero-imputation network, M2DN and MMHVAE, not for
    # MM-GAN or ResViT, which override it (docs/performance.md; `benchmarks/bench_kernels.py`).
    cpu_inference_channels_last = True

    def generate(self, inputs: Tensor, subset: Tensor, generator: torch.Generator | RowNoise | None = None
                 ) -> Tensor:
        """All M images in [-1, 1] from the M input channels, zeros where a modality is not in `subset` ([B, M]
        bool); `generator` feeds the generators that draw noise (M2DN)."""
        raise NotImplementedError

    def encode(self, images: Tensor, present: Tensor) -> EncodedImages:
        """Keep the images (absent modalities zeroed; they may hold anything, NaN included): the generator's
        input depends on the subset, so the work happens in `decode`."""
        return EncodedImages.from_images(images, self._check_inputs(images, present))

    def decode(
        self,
        features: EncodedModalities,
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
        if not isinstance(features, EncodedImages):
            raise ValueError(f"{type(self).__name__}.decode needs features from its encode (they hold the images)")
        subset = self._check_subset(features, subset)
        inputs = zero_outside(features.images, subset)
        return MMHVAEOutput(images=self.generate(inputs, subset, generator), kl=[], kl_groups=(), z1_mean=None)
