"""The cost figures of a network, shared by `mmhvae info` and `mmhvae benchmark`: parameter count,
multiply-accumulates per slice (Section 5.1) and inference latency, with the wall-clock timing they rest on."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmhvae.config import RunConfig, load_config, with_method
from mmhvae.errors import InputError
from mmhvae.inference.device import autocast
from mmhvae.methods import METHODS
from mmhvae.model.registry import build_network


def synchronise(device: torch.device | None) -> None:
    """Wait for queued GPU work, so that a wall-clock time includes it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of `fn` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def method_network(config: str, method: str) -> tuple[torch.nn.Module, RunConfig]:
    """The network and run configuration of `method` (as `mmhvae train --method`) from a preset or YAML file."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    run = with_method(load_config(config), method)
    return build_network(run.model.to_dict()), run


@torch.inference_mode()
def inference_latency(model: torch.nn.Module, batch: int, repeats: int, device: torch.device,
                      precision: str = "fp32") -> float:
    """Seconds per slice of one forward pass (all inputs present, temperature 0.5) at this batch size."""
    cfg = model.config
    images = torch.zeros(batch, len(cfg.modalities), cfg.image_size, cfg.image_size, device=device)
    present = torch.ones(batch, len(cfg.modalities), dtype=torch.bool, device=device)

    def forward() -> None:
        with autocast(device, precision):
            model(images, present, temperature=0.5)

    return median_time(forward, repeats, device=device) / batch


def parameter_count(model: torch.nn.Module) -> int:
    """Number of learnt values of the network (weights and biases)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()  # not inference_mode: the flop counter fails on weight-normalised layers under it
def macs_per_slice(model: torch.nn.Module, inputs: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on one slice with the first `inputs` modalities present."""
    cfg = model.config
    present = torch.zeros(1, len(cfg.modalities), dtype=torch.bool)
    present[0, : inputs or len(cfg.modalities)] = True
    images = torch.zeros(1, len(cfg.modalities), cfg.image_size, cfg.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, present, temperature=0.0)
    return counter.get_total_flops() // 2
