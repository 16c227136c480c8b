"""Synthesis: every modality from any subset of a prepared subject's modalities, slice by slice.

Each present modality is encoded once per slice batch and its features are reused for every requested
subset and sample (the subsets and samples are batched into one decoding pass). At temperature T the
posterior standard deviations are scaled by T (0.5 by default, Section 4.2); `samples` > 1 returns the
mean of the samples and a per-voxel standard deviation map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmhvae.errors import InputError
from mmhvae.inference.device import autocast
from mmhvae.modalities import ModalitySet, Subset
from mmhvae.model.distributions import RowNoise
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.preprocessing.intensity import BACKGROUND
from mmhvae.preprocessing.prepare import PreparedSubject

DEFAULT_TEMPERATURE = 0.5
# Decoding rows per pass, as a pixel budget: large batches of 192x192 activations overflow the CPU caches and
# made one 15-subset run slower than 15 single runs (benchmark); 64x64 still gets 32 rows at once.
DECODE_PIXELS_PER_PASS = 32 * 64 * 64


@dataclass
class Synthesis:
    """Outputs for one subset, on the network's scale: mean (and std) [M, H, W, S]."""

    subset: Subset
    mean: np.ndarray
    std: np.ndarray | None


@torch.inference_mode()
def synthesise(model: MMHVAE, prepared: PreparedSubject, subsets: Sequence[Subset], temperature: float =
               DEFAULT_TEMPERATURE, samples: int = 1, slice_batch: int = 8, max_rows: int | None = None,
               generator_seed: int | None = 0, precision: str = "fp32") -> list[Synthesis]:
    """Every modality from each subset in `subsets`, for every foreground slice of `prepared`.

    Slices without foreground stay at background (-1). Deterministic for a given `generator_seed`: sample s of
    slice k draws its noise from its own stream (RowNoise keyed by slice and sample), so it is the same for every
    subset and whichever subsets, slice batch or device chunking a run uses (`None`: the global RNG instead).
    precision "bf16" runs the networks under bf16 autocast (fast on GPUs and on CPUs with bf16 units).
    """
    modalities = ModalitySet(tuple(model.config.modalities))
    device = next(model.parameters()).device
    masks = torch.tensor([modalities.indicator(s) for s in subsets], dtype=torch.bool, device=device)
    if bool((masks & ~torch.from_numpy(prepared.present).to(device)).any()):
        raise InputError(f"subject '{prepared.name}': a requested input subset includes a missing modality")
    n_sub, n_mod = len(subsets), len(modalities)
    shape = prepared.inputs.shape
    sums = np.full((n_sub, *shape), 0.0, np.float64)
    squares = np.zeros((n_sub, *shape), np.float64) if samples > 1 else None
    present = torch.from_numpy(prepared.present).to(device)
    for start in range(0, len(prepared.slices), slice_batch):
        ks = prepared.slices[start:start + slice_batch]
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared.inputs[..., ks], -1, 0))).to(device)
        with autocast(device, precision):
            features = model.encode(x, present.expand(len(ks), n_mod))
        # rows: for each subset, for each sample, every slice of the chunk
        subset_of_row = torch.arange(n_sub, device=device).repeat_interleave(samples * len(ks))
        slice_of_row = torch.arange(len(ks), device=device).repeat(n_sub * samples)
        sample_of_row = torch.arange(samples, device=device).repeat_interleave(len(ks)).repeat(n_sub)
        noise_key = torch.as_tensor(ks, device=device)[slice_of_row] * samples + sample_of_row
        images = []
        rows_per_pass = max_rows or max(1, DECODE_PIXELS_PER_PASS // (shape[1] * shape[2]))
        for lo in range(0, len(slice_of_row), rows_per_pass):
            rows = slice(lo, lo + rows_per_pass)
            with autocast(device, precision):
                noise = None if generator_seed is None else RowNoise(noise_key[rows], generator_seed)
                out = model.decode(features.index(slice_of_row[rows]), masks[subset_of_row[rows]], temperature,
                                   generator=noise)
            images.append(out.images.float().cpu())
        images = torch.cat(images).view(n_sub, samples, len(ks), n_mod, *shape[1:3]).double().numpy()
        sums[..., ks] = np.moveaxis(images.sum(axis=1), 1, -1)
        if squares is not None:
            squares[..., ks] = np.moveaxis((images**2).sum(axis=1), 1, -1)
    results = []
    for i, subset in enumerate(subsets):
        mean = sums[i] / samples
        std = None
        if squares is not None:
            std = np.sqrt(np.maximum(squares[i] / samples - mean**2, 0.0) * samples / (samples - 1))
        outside = np.ones(shape, bool)
        outside[..., prepared.slices] = False
        mean[outside] = BACKGROUND
        results.append(Synthesis(tuple(subset), mean.astype(np.float32),
                                 None if std is None else std.astype(np.float32)))
    return results


def check_sampling(temperature: float, samples: int) -> None:
    """The --temperature and --samples options of predict and evaluate, or an input error."""
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")
