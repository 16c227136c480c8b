"""The downstream verbs of Section 7: `segment` ultrasound tumours with networks learnt from synthetic ultrasound
(Table IV) and `register` pre-operative MR to ultrasound (Table III)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mmhvae.cli.common import add_device, add_overwrite, add_seed, add_temperature
from mmhvae.errors import InputError

SEGMENTATION_DEVICES = ("cpu", "cuda", "auto")


def named_folders(items: Sequence[str]) -> dict[str, Path]:
    """The --test NAME=FOLDER options of `segment experiment` as {name: folder}."""
    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--test {item!r}: expected NAME=FOLDER, e.g. remind=data/us-test")
        folders[name] = Path(folder)
    return folders


def run_segment(args: argparse.Namespace) -> int:
    from mmhvae.experiments.downstream.segmentation import segmentation_experiment, train_segmentation_network

    options = dict(steps=args.steps, seed=args.seed, temperature=args.temperature, folds=args.folds,
                   batch_size=args.batch_size, learning_rate=args.lr, device=args.device, overwrite=args.overwrite)
    if args.segment_command == "experiment":
        segmentation_experiment(args.model, args.mr_data, named_folders(args.test), args.supervised_data, args.out,
                                **options)
        print(f"wrote {args.out / 'table.md'} and {args.out / 'segmentation.csv'}")
    else:
        path = train_segmentation_network(args.data, args.out, model=args.model, **options)
        print(f"segmentation network: {path}")
    return 0


def run_segment_apply(args: argparse.Namespace) -> int:
    from mmhvae.experiments.downstream.segmenter import segment_ultrasound

    print(f"wrote {segment_ultrasound(args.network, args.image, args.out, args.overwrite, args.device)}")
    return 0


def run_registration_experiment(args: argparse.Namespace) -> int:
    """`register --experiment`: Table III over --data, comparing the --model files."""
    from mmhvae.experiments.downstream import registration

    if args.data is None:
        raise InputError("--experiment needs --data (and --model files to compare)")
    registration.registration_experiment(args.model, args.data, args.out, registration.parse_ranges(args.ranges),
                                         args.displacements, args.sequences, args.seed, args.temperature,
                                         overwrite=args.overwrite, device=args.device)
    print(f"wrote {args.out / 'registration.md'} and {args.out / 'registration.csv'}")
    return 0


def run_register(args: argparse.Namespace) -> int:
    if args.experiment:
        return run_registration_experiment(args)
    from mmhvae.experiments.downstream import rigid

    if args.fixed is None or args.moving is None:
        raise InputError("give --fixed and --moving (or --experiment --data DIR --model ...)")
    image, transform = rigid.run_register(args.fixed, args.moving, args.out, args.metric, args.fixed_mask,
                                          args.overwrite)
    print(f"wrote {image} and {transform}")
    return 0


def add_segmentation_training_options(parser: argparse.ArgumentParser) -> None:
    """The options of `segment experiment` and `segment train`: how each segmentation network is trained."""
    parser.add_argument("--steps", type=int, default=1000, help="training steps per network")
    parser.add_argument("--folds", type=int, default=1, help="> 1: an ensemble, one network per fold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    add_temperature(parser, help="of the ultrasound synthesis")
    add_seed(parser)
    add_device(parser, choices=SEGMENTATION_DEVICES, help=None)
    add_overwrite(parser, help=None)
    parser.set_defaults(func=run_segment)


def add_segment_experiment(commands: argparse._SubParsersAction) -> None:
    experiment = commands.add_parser("experiment", help="one network per synthesis method (+ fully supervised), "
                                                        "scored on labelled ultrasound test sets")
    experiment.add_argument("--model", nargs="+", required=True, type=Path, help="synthesis model files (methods)")
    experiment.add_argument("--mr-data", required=True, type=Path,
                            help="MR cohort with seg.nii.gz (its ultrasound, if any, is ignored)")
    experiment.add_argument("--test", action="append", required=True, metavar="NAME=FOLDER",
                            help="labelled acquired ultrasound test set (repeatable)")
    experiment.add_argument("--supervised-data", type=Path, default=None,
                            help="labelled acquired ultrasound for the fully supervised baseline")
    experiment.add_argument("--out", required=True, type=Path, help="writes table.md, segmentation.csv, networks/")
    add_segmentation_training_options(experiment)


def add_segment_train(commands: argparse._SubParsersAction) -> None:
    trainer = commands.add_parser("train", help="train one segmentation network file")
    trainer.add_argument("--data", required=True, type=Path, help="labelled ultrasound, or an MR cohort with --model")
    trainer.add_argument("--model", type=Path, default=None,
                         help="train on ultrasound this model synthesises from the MR of --data")
    trainer.add_argument("--out", required=True, type=Path, help="network file (.pt)")
    add_segmentation_training_options(trainer)


def add_segment_apply(commands: argparse._SubParsersAction) -> None:
    apply = commands.add_parser("apply", help="segment the tumour in one ultrasound volume")
    apply.add_argument("--network", required=True, type=Path, help="a network file from 'segment train/experiment'")
    apply.add_argument("--image", required=True, type=Path, help="ultrasound volume (NIfTI)")
    apply.add_argument("--out", required=True, type=Path, help="mask to write (NIfTI, on the image's grid)")
    add_device(apply, choices=SEGMENTATION_DEVICES, help=None)
    add_overwrite(apply, help=None)
    apply.set_defaults(func=run_segment_apply)


def add_segment(verbs: argparse._SubParsersAction) -> None:
    segment = verbs.add_parser("segment", help="ultrasound tumour segmentation learnt from synthetic ultrasound "
                                               "(Table IV)")
    commands = segment.add_subparsers(dest="segment_command", required=True, metavar="COMMAND")
    add_segment_experiment(commands)
    add_segment_train(commands)
    add_segment_apply(commands)


def add_register(verbs: argparse._SubParsersAction) -> None:
    register = verbs.add_parser("register", help="rigid MR-ultrasound registration; --experiment: Table III")
    register.add_argument("--fixed", type=Path, help="fixed image (ultrasound or synthetic MR)")
    register.add_argument("--moving", type=Path, help="moving image (pre-operative MR)")
    register.add_argument("--out", required=True, type=Path, help="OUT.nii.gz (+ OUT.tfm); with --experiment a folder")
    register.add_argument("--metric", default="mattes", choices=["mattes", "correlation"],
                          help="single pair: mattes (MR vs US) or correlation (MR vs synthetic MR)")
    register.add_argument("--fixed-mask", type=Path, default=None,
                          help="FOV mask on the fixed grid (default: non-background)")
    register.add_argument("--experiment", action="store_true", help="Table III over --data, comparing --model files")
    register.add_argument("--model", type=Path, nargs="*", default=[], help="with --experiment: synthesis model files")
    register.add_argument("--data", type=Path, default=None, help="with --experiment: test subjects (us + MR)")
    register.add_argument("--ranges", default="0-4,4-8,8-12,12-16", help="median displacement ranges in mm")
    register.add_argument("--displacements", type=int, default=10, help="random displacements per range")
    register.add_argument("--sequences", default="t2,t1c,flair")
    add_seed(register)
    add_temperature(register)
    add_device(register)
    add_overwrite(register, help=None)
    register.set_defaults(func=run_register)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `segment experiment|train|apply` and `register` on the verbs of the `mmhvae` parser."""
    add_segment(verbs)
    add_register(verbs)

