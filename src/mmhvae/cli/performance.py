"""The cost verbs: `info` (modalities, parameters and MACs of a network) and `benchmark` (latency, training step
time and memory of every method)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmhvae.cli.common import ALL_METHODS, add_device
from mmhvae.errors import InputError


def run_info(args: argparse.Namespace) -> int:
    from mmhvae.performance.info import describe

    methods = args.methods.split(",") if args.methods else ()
    if args.model and methods:
        raise InputError("--methods describes networks of a --config; a model file already has its method")
    print(describe(config=args.config, model=args.model, latency=args.latency, methods=methods))
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    import torch

    from mmhvae.io.files import write_text_atomic
    from mmhvae.performance.benchmark import benchmark, markdown

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    report = benchmark(args.configs.split(","), args.methods.split(","), repeats=args.repeats, device=args.device,
                       depth=args.depth, precision=args.precision, compile_network=args.compile,
                       train_batches=tuple(int(b) for b in args.train_batches.split(",") if b))
    print(markdown(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def add_info(verbs: argparse._SubParsersAction) -> None:
    info = verbs.add_parser("info", help="modalities, parameter count and MACs per slice")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, help="tiny, paper or a YAML file")
    source.add_argument("--model", default=None, type=Path, nargs="+", help="model file(s) or run folder(s)")
    info.add_argument("--methods", default=None,
                      help="with --config: these methods' networks (default: the config's train.method), e.g. "
                           + ALL_METHODS)
    info.add_argument("--latency", action="store_true", help="also time one forward pass per slice")
    info.set_defaults(func=run_info)


def add_benchmark(verbs: argparse._SubParsersAction) -> None:
    bench = verbs.add_parser("benchmark", help="parameters, MACs, latency, training step time and memory")
    bench.add_argument("--configs", default="tiny,paper", help="comma-separated presets or YAML files")
    bench.add_argument("--methods", default=ALL_METHODS, help="comma-separated methods")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median), after a warm-up")
    add_device(bench, choices=("cpu", "cuda"), help=None)
    bench.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="networks in float32 or under bf16 autocast (the GPU default of predict and train)")
    bench.add_argument("--compile", action="store_true",
                       help="torch.compile the networks that support it (as predict --compile); untimed warm-up")
    bench.add_argument("--depth", type=int, default=32, help="slices of the slab predicted from all 15 subsets")
    bench.add_argument("--train-batches", default="4,16", help="batch sizes of the training-step figures")
    bench.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    bench.set_defaults(func=run_benchmark)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `info` and `benchmark` on the verbs of the `mmhvae` parser."""
    add_info(verbs)
    add_benchmark(verbs)
