"""TODO docstring."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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
        # `where`, not a product: NaN in an absent image must not leak into the zeros.
        kept = torch.where(present[:, :, None, None], images, torch.zeros_like(images))
        return cls([], images.new_zeros(images.shape[0], 0), present, kept)

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
