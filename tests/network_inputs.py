"""Inputs shared by the network tests: small configurations, random images in [-1, 1], subset masks, parameter
counts."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mmhvae.config import preset
from mmhvae.model.mmhvae_config import MMHVAEConfig

B, M, SIZE = 3, 4, 64  # batch, modalities, image side


def random_images(batch: int = B, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, M, size, size, generator=generator) * 2 - 1


def mask(*rows: str) -> torch.Tensor:
    """mask("1100", "0010") -> bool [2, 4]."""
    return torch.tensor([[c == "1" for c in row] for row in rows])


def all_present(batch: int = B) -> torch.Tensor:
    return torch.ones(batch, M, dtype=torch.bool)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_config(**overrides: Any) -> MMHVAEConfig:
    """The `tiny` preset's network with one decoder block per modality (faster tests), plus `overrides`."""
    return dataclasses.replace(preset("tiny").model, **{"decoder_blocks": 1, **overrides})


def paper_config(**overrides: Any) -> MMHVAEConfig:
    """The `paper` preset's network (Section 4.2), plus `overrides`."""
    return dataclasses.replace(preset("paper").model, **overrides)
