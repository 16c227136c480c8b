"""The `train` verb: a data folder and a configuration in, a run folder with its model file out (Algorithm 1)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_train(args: argparse.Namespace) -> int:
    from mmhvae.training.trainer import train

    model = train(args.data, args.out, args.config, max_steps=args.max_steps, max_minutes=args.max_minutes,
                  devices=args.devices, nodes=args.nodes, resume=args.resume, accelerator=args.accelerator,
                  progress=not args.no_progress, init_from=args.init_from, method=args.method,
                  vit_weights=args.vit_weights, modalities=args.modalities)
    print(f"model file: {model}")
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `train` on the verbs of the `mmhvae` parser."""
    train = verbs.add_parser("train", help="train MMHVAE on a data folder (Algorithm 1)")
    train.add_argument("--data", required=True, type=Path, help="data folder (see README: layouts)")
    train.add_argument("--out", required=True, type=Path, help="run folder: config, logs, checkpoints, model.pt")
    train.add_argument("--config", default="tiny",
                       help="tiny, paper, paper-cpu, paper-cpu-fp32, brats, or a YAML file (default: tiny)")
    # Not an argparse type: an unknown name is refused by `train` itself, as a one-line input error.
    train.add_argument("--modalities", default=None,
                       help="comma-separated modalities the network is built for, e.g. t1,pd (default: those the "
                            "config names, else those found in --data)")
    train.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    train.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time")
    train.add_argument("--devices", type=int, default=1, help="processes/GPUs per node (DDP when > 1)")
    train.add_argument("--nodes", type=int, default=1, help="number of nodes (DDP)")
    train.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--init-from", type=Path, default=None,
                       help="start from the weights of this model file (same architecture, or differing only in "
                            "parts train.trainable lists, which start fresh; new optimisers)")
    train.add_argument("--vit-weights", type=Path, default=None,
                       help="ResViT: load its transformer from an ImageNet ViT checkpoint (R50+ViT-B_16.npz or "
                            "ViT-B_16.npz, Google's format) before training")
    # Not argparse choices: `train` refuses an unknown method itself, as a one-line input error.
    train.add_argument("--method", default=None,
                       help="mmhvae (default, or the config's train.method) or a baseline: mopoe (L = 1), average, "
                            "concat-zeros (one encoder), mmgan (U-Net GAN), resvit (transformer GAN), m2dn (diffusion),"
                            " mhvae (MICCAI 2023, us and t2 only)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    train.set_defaults(func=run_train)
