"""`mmhvae info`: what a configuration or a model file is, and what one slice costs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmhvae.config import load_config
from mmhvae.model.mmhvae import MMHVAE


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()  # not inference_mode: the flop counter fails on weight-normalised layers under it
def macs_per_slice(model: MMHVAE, inputs: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on one slice with the first `inputs` modalities present."""
    cfg = model.config
    present = torch.zeros(1, len(cfg.modalities), dtype=torch.bool)
    present[0, : inputs or len(cfg.modalities)] = True
    images = torch.zeros(1, len(cfg.modalities), cfg.image_size, cfg.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, present, temperature=0.0)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def latency_per_slice(model: MMHVAE, repeats: int = 5) -> float:
    cfg = model.config
    images = torch.zeros(1, len(cfg.modalities), cfg.image_size, cfg.image_size)
    present = torch.ones(1, len(cfg.modalities), dtype=torch.bool)
    model(images, present, temperature=0.5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images, present, temperature=0.5)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def describe(config: str | None = None, model: Path | None = None, latency: bool = False) -> str:
    if model is not None:
        from mmhvae.model_file import load_model_file

        loaded = load_model_file(model)
        network, source = loaded.model, f"model file {model}"
        meta = loaded.meta
    else:
        run = load_config(config or "tiny")
        network, source, meta = MMHVAE.from_config(run.model).eval(), f"config {config or 'tiny'}", {}
    cfg = network.config
    lines = [
        f"{source}",
        f"  modalities        {','.join(cfg.modalities)}",
        f"  image size        {cfg.image_size}x{cfg.image_size}, {cfg.num_pool} poolings, "
        f"latent groups {cfg.stochastic_groups}",
        f"  options           topdown={cfg.topdown} heads={cfg.heads} fusion={cfg.fusion}",
        f"  parameters        {parameter_count(network):,}",
        f"  MACs per slice    {macs_per_slice(network) / 1e9:.3f} G (all inputs), "
        f"{macs_per_slice(network, 1) / 1e9:.3f} G ({cfg.modalities[0]} only)",
    ]
    if latency:
        lines.append(f"  latency per slice {1000 * latency_per_slice(network):.1f} ms "
                     f"(CPU, {torch.get_num_threads()} threads, all inputs)")
    if meta.get("steps") is not None:
        lines.append(f"  trained           {meta['steps']} steps, {meta.get('train_minutes', 0):.1f} min")
    return "\n".join(lines)
