"""Benchmark: instance-norm kernel and memory format, timed against each other on one network.

    PYTHONPATH=src python benchmarks/bench_kernels.py [--config paper] [--method mmhvae] [--device cpu|cuda]
        [--precision fp32|bf16] [--batches 1,16] [--train-batch 4] [--rounds 5] [--json OUT.json]

Four variants of the same network and weights: instance norm by torch's kernel (`nn.InstanceNorm2d`, batch norm
underneath) or by the group-norm kernel (`mmhvae.model.blocks.InstanceNorm2d`), each in the default
(contiguous) or channels-last memory format. A shared machine's speed drifts by up to 30 % within minutes, so the
variants are timed in turn, round after round, in one process, and the medians compared: read the ratios, not
single figures. Inference: one forward pass per batch size (all inputs present, temperature 0.5). Training
(`--train-batch`, 0 to skip): one Algorithm-1 step (T passes, backward, Adamax). Prints a table and the
largest output difference of each variant from torch's kernel in the default format.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmhvae.allocator import keep_freed_memory
from mmhvae.inference.device import autocast
from mmhvae.model.blocks import InstanceNorm2d
from mmhvae.performance.benchmark import machine_description, training_step
from mmhvae.performance.cost import method_network, synchronise
from mmhvae.training.trainer import module_for

KERNELS = {"torch": (), "group-norm": ("cpu", "cuda")}
FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Seconds of fn(*args), GPU work included, and its result."""
    synchronise(device)
    start = time.perf_counter()
    result = fn(*args)
    synchronise(device)
    return time.perf_counter() - start, result


def forward_pass(network: torch.nn.Module, images: torch.Tensor, present: torch.Tensor, precision: str
                 ) -> torch.Tensor:
    torch.manual_seed(1)  # the same posterior draws for every variant
    with torch.inference_mode(), autocast(images.device, precision):
        return network(images, present, temperature=0.5).images.float()


def random_batch(cfg: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(batch, len(cfg.modalities), cfg.image_size, cfg.image_size, device=device) * 2 - 1
    return images, torch.ones(batch, len(cfg.modalities), dtype=torch.bool, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--method", default="mmhvae", help="a method of `mmhvae train --method`")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batches", default="1,16", help="inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=4, help="training step batch size (0: no training)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = parser.parse_args()
    keep_freed_memory()  # as every `mmhvae` command does
    device = torch.device(args.device)
    torch.manual_seed(0)
    network, run = method_network(args.config, args.method)
    cfg = network.config
    variants = [(kernel, layout) for kernel in KERNELS for layout in FORMATS]
    names = [f"{kernel}, {layout}" for kernel, layout in variants]
    times: dict[str, dict[str, list[float]]] = {}
    differences: dict[str, float] = dict.fromkeys(names, 0.0)

    networks = {layout: copy.deepcopy(network).to(device, memory_format=FORMATS[layout]).eval() for layout in FORMATS}
    for batch in [int(b) for b in args.batches.split(",")]:
        images, present = random_batch(cfg, batch, device)
        figure = times.setdefault(f"forward b{batch} (ms/slice)", {name: [] for name in names})
        outputs = {}
        for round_ in range(args.rounds + 1):  # one warm-up round
            for name, (kernel, layout) in zip(names, variants, strict=True):
                InstanceNorm2d.group_norm_devices = KERNELS[kernel]
                x = images.contiguous(memory_format=FORMATS[layout])
                elapsed, outputs[name] = timed(device, forward_pass, networks[layout], x, present, args.precision)
                if round_:
                    figure[name].append(1000 * elapsed / batch)
        for name in names:
            difference = float((outputs[name] - outputs[names[0]]).abs().max())
            differences[name] = max(differences[name], difference)

    if args.train_batch:
        run.train.batch_size = args.train_batch
        images, present = random_batch(cfg, args.train_batch, device)
        figure = times.setdefault(f"train step b{args.train_batch} (s)", {name: [] for name in names})
        modules = {}
        for layout, memory_format in FORMATS.items():
            module = module_for(run).to(device)
            module.model.load_state_dict(network.state_dict())
            module.model.to(memory_format=memory_format)
            data = {"inputs": images.contiguous(memory_format=memory_format), "present": present}
            data["targets"] = data["inputs"]
            modules[layout] = (module, torch.optim.Adamax(module.model.parameters(), lr=run.train.lr), data)
        for round_ in range(args.rounds + 2):  # two warm-up rounds: the allocator settles in the first two steps
            for name, (kernel, layout) in zip(names, variants, strict=True):
                InstanceNorm2d.group_norm_devices = KERNELS[kernel]
                elapsed, _ = timed(device, training_step, *modules[layout], args.precision)
                if round_ >= 2:
                    figure[name].append(elapsed)

    medians = {figure: {v: statistics.median(t) for v, t in by_variant.items()} for figure, by_variant in times.items()}
    machine = machine_description(args.device)
    print(f"{args.config}, {args.method}, {args.device}, {args.precision}; medians of {args.rounds} rounds in turn; "
          "machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print("| variant | " + " | ".join(medians) + " | max output difference |")
    print("|---" * (len(medians) + 2) + "|")
    for name in names:  # ratios to the first variant: torch's kernel, contiguous
        cells = [f"{m[name]:.{1 if 'ms' in f else 2}f} ({m[name] / m[names[0]]:.2f})" for f, m in medians.items()]
        print(f"| {name} | " + " | ".join(cells) + f" | {differences[name]:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "method": args.method, "device": args.device,
                                         "precision": args.precision, "rounds": args.rounds, "machine": machine,
                                         "medians": medians, "max_output_difference": differences}, indent=1))


if __name__ == "__main__":
    main()
