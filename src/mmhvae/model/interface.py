"""The interface every synthesis network of the package shares: MMHVAE (model/mmhvae.py), the authors' released
network (model/authors.py) and the zero-imputation generators (model/baselines/: MM-GAN, ResViT, M2DN).

Prediction, evaluation and the studies use a network through what `SynthesisNetwork` declares, so there any of
these networks can stand in for another:

    features = model.encode(images, present)   # images [B, M, H, W] in config.modalities order, present [B, M] bool
    out = model.decode(features, subset, temperature=0.5, generator=torch.Generator().manual_seed(0))
    out.images                                 # [B, M, H, W], every modality, in [-1, 1]
    model(images, present, subset, temperature, generator=...)  # decode(encode(images, present), subset)

- `encode(images, present) -> EncodedModalities`: the bottom-up work that does not depend on the subset fused.
  Values of absent modalities are ignored (they may be anything, NaN included). MMHVAE and the authors'
  network return per-modality features ("encode once, fuse many": training with T subsets and 15-subset
  inference decode the same features many times); networks whose features depend on the subset (MMHVAE's
  joint encoder, the zero-imputation generators) return `EncodedImages`, the masked images themselves.
- `decode(features, subset, temperature, sample, kl, generator) -> MMHVAEOutput`: every modality from the
  modalities r' of `subset` ([B, M] bool, rows may differ, subset <= features.present). `temperature` scales
  the posterior standard deviations of MMHVAE's latents (0 or sample=False: the means); `kl` picks the KL
  reported per group ("analytic" or Eq. 19's single-sample estimate); `generator` (a torch.Generator or a
  per-row `RowNoise`) feeds every random draw, so outputs are reproducible. The zero-imputation generators
  ignore temperature, sample and kl and report no KL; M2DN draws its noise from `generator`.
- `forward(images, present, subset=None, temperature, sample, generator)`: decode(encode(...)), the subset
  defaulting to every present modality.

A network also rebuilds from its configuration (`from_config(model.to_dict())`), a dataclass that round-trips
through a plain dict (`PlainDictConfig`), and says whether CPU inference runs faster in channels-last memory
layout (`cpu_inference_channels_last`, read by model_file.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmhvae.model.distributions import RowNoise


class PlainDictConfig:
    """Serialisation shared by the network configurations (dataclasses): a plain dict of str, int, float,
    list and None, safe for torch.load(weights_only=True), and back, refusing unknown fields."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_checker(config: Any, variant: str | None = None) -> Callable[[bool, str], None]:
    """`check(condition, problem)` for a network configuration dataclass, which raises its one-line error
    ("<Config class>: problem"), after the checks every one needs: its variant (unless None), at least one
    modality, none twice (`modalities` becomes a tuple)."""
    name = type(config).__name__

    def check(condition: bool, problem: str) -> None:
        if not condition:
            raise ValueError(f"{name}: {problem}")

    config.modalities = tuple(config.modalities)
    if variant is not None:
        check(config.variant == variant, f"variant must be '{variant}', got {config.variant!r}")
    check(len(config.modalities) > 0, "at least one modality is needed")
    check(len(set(config.modalities)) == len(config.modalities), f"duplicate modalities {config.modalities}")
    return check


def zero_outside(images: Tensor, modalities: Tensor) -> Tensor:
    """images [B, M, H, W] with the modalities outside `modalities` ([B, M] bool) set to 0."""
    # `where`, not a product: NaN in an absent image must not leak into the zeros.
    return torch.where(modalities[:, :, None, None], images, torch.zeros_like(images))


@dataclass
class EncodedModalities:
    """Bottom-up features of every modality, computed once and fused for any subset.

    skips[s]: [B, M, C_s, H_s, W_s] for spatial level s (finest first); bottom: [B, M, D] flattened
    coarsest map (input of the global expert). Entries of absent modalities are zeros and are never
    read by `decode` (it only uses modalities with subset & present).
    """

    skips: list[Tensor]
    bottom: Tensor
    present: Tensor

    @property
    def batch_size(self) -> int:
        return self.present.shape[0]

    def index(self, rows: Tensor) -> EncodedModalities:
        """Select/repeat samples, e.g. rows = arange(B).repeat_interleave(15) to decode 15 subsets."""
        return EncodedModalities([s[rows] for s in self.skips], self.bottom[rows], self.present[rows])


@dataclass
class EncodedImages(EncodedModalities):
    """What `encode` returns for networks whose features depend on the subset, and so cannot "encode once,
    fuse many" (the joint encoder of `encoder: "joint"`, MM-GAN): the images themselves, [B, M, H, W], absent
    modalities set to 0; `skips` is empty and `bottom` is [B, 0]. Their `decode` does the encoding, on the
    images masked by each row's subset.
    """

    images: Tensor

    @classmethod
    def from_images(cls, images: Tensor, present: Tensor) -> EncodedImages:
        return cls([], images.new_zeros(images.shape[0], 0), present, zero_outside(images, present))

    def index(self, rows: Tensor) -> EncodedImages:
        return EncodedImages([], self.bottom[rows], self.present[rows], self.images[rows])


@dataclass
class MMHVAEOutput:
    """Result of one decoding pass.

    images: [B, M, H, W] in [-1, 1], all modalities, decoded from z_1 (Eq. 6).
    kl: per stochastic group, finest first (paper indices in `kl_groups`), a [B] tensor summed over
        that group's dimensions: KL[q(z_l | x_r', z_>l) || p(z_l | z_>l)], analytic or Eq. 19's
        single-sample estimate.
    z1_mean: posterior mean of z_1 [B, C_1, H, W] (None if z_1 is not stochastic).
    """

    images: Tensor
    kl: list[Tensor]
    kl_groups: tuple[int, ...]
    z1_mean: Tensor | None = None

    @property
    def kl_total(self) -> Tensor:
        """Sum over groups of the per-sample KL, [B]."""
        return torch.stack(self.kl, dim=0).sum(dim=0)


class SynthesisNetwork(nn.Module):
    """What every synthesis network shares (module docstring): construction from its configuration, the
    input checks of `encode` and `decode`, and `forward`.

    A subclass names its configuration dataclass (`config_class`, a `PlainDictConfig` with `modalities` and
    `image_size`), keeps an instance in `self.config` and implements `encode` and `decode`.
    """

    config: Any
    config_class: ClassVar[type]
    # Whether inference on CPUs is faster in channels-last (docs/performance.md; `benchmarks/bench_kernels.py`).
    cpu_inference_channels_last: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Any) -> SynthesisNetwork:
        """The network of a configuration, given as its dataclass or as the plain dict of `to_dict`."""
        if not isinstance(config, cls.config_class):
            config = cls.config_class.from_dict(config)
        return cls(config)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict; `type(model).from_config(model.to_dict())` rebuilds the network."""
        return self.config.to_dict()

    @property
    def num_modalities(self) -> int:
        return len(self.config.modalities)

    def encode(self, images: Tensor, present: Tensor) -> EncodedModalities:
        """The subset-independent work on images [B, M, H, W] with modalities `present` ([B, M] bool)."""
        raise NotImplementedError

    def decode(
        self,
        features: EncodedModalities,
        subset: Tensor,
        temperature: float = 1.0,
        sample: bool = True,
        kl: str | None = None,
        generator: torch.Generator | RowNoise | None = None,
    ) -> MMHVAEOutput:
        """Every modality from the modalities of `subset` ([B, M] bool, within features.present)."""
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        present: Tensor,
        subset: Tensor | None = None,
        temperature: float = 1.0,
        sample: bool = True,
        generator: torch.Generator | RowNoise | None = None,
    ) -> MMHVAEOutput:
        """decode(encode(images, present), subset); subset defaults to all present modalities."""
        features = self.encode(images, present)
        subset = features.present if subset is None else subset
        return self.decode(features, subset, temperature, sample, generator=generator)

    def _check_inputs(self, images: Tensor, present: Tensor) -> Tensor:
        """The inputs of `encode` checked: `present` as bool [B, M], images [B, M, image_size, image_size]."""
        present = self._check_mask(present, images.shape[0], "present")
        if images.ndim != 4 or images.shape[1] != self.num_modalities:
            raise ValueError(f"images must be [B, {self.num_modalities}, H, W], got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"images must be {size}x{size}, got {tuple(images.shape[-2:])}")
        return present

    def _check_subset(self, features: EncodedModalities, subset: Tensor) -> Tensor:
        """`subset` of `decode` as bool [B, M], checked to select encoded modalities only."""
        subset = self._check_mask(subset, features.batch_size, "subset")
        if bool((subset & ~features.present).any()):
            raise ValueError("subset selects a modality that was not encoded (not in `present`)")
        return subset

    def _check_mask(self, mask: Tensor, batch: int, name: str) -> Tensor:
        if mask.shape != (batch, self.num_modalities):
            raise ValueError(f"{name} must be [{batch}, {self.num_modalities}], got {tuple(mask.shape)}")
        return mask.to(torch.bool)
