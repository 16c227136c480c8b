"""The `mmhvae` command: each verb is a thin wrapper over a Python function.

Exit codes (design.md): 0 success; 2 bad input or usage, one line on stderr naming the file and the
problem; 1 unexpected internal error (traceback only with --debug).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mmhvae import __version__
from mmhvae.errors import InputError
from mmhvae.modalities import PAPER_MODALITIES, ModalitySet, subset_label

# Verbs whose issue has not landed yet: they say so and exit 2 (usage error), never pretend.
PLANNED_VERBS: dict[str, str] = {
    "train": "training (the model issue)",
    "predict": "inference (the model issue)",
    "evaluate": "the evaluation suite",
    "ablate": "the ablation study (evaluation issue)",
    "benchmark": "the performance benchmarks",
    "register": "MR-ultrasound registration (downstream issue)",
    "segment": "ultrasound tumour segmentation (downstream issue)",
    "analyse": "latent and temperature analyses (downstream issue)",
    "import-authors": "loading the authors' released checkpoint",
}


def _modality_set(text: str) -> ModalitySet:
    try:
        return ModalitySet.parse(text)
    except InputError as exc:  # argparse turns this into a one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_check(args: argparse.Namespace) -> int:
    """Discover and load every subject of a data folder; print its missingness pattern and grid."""
    from mmhvae.io import discover_subjects, load_subject

    modalities = args.modalities
    subjects = discover_subjects(args.data)
    patterns: dict[tuple[str, ...], int] = {}
    for files in subjects:
        subject = load_subject(files, modalities, resample_to=args.resample_to, nan_to_num=args.nan_to_num)
        present = subject.present(modalities)
        patterns[present] = patterns.get(present, 0) + 1
        grid = subject.reference
        extras = [name for name in ("seg", "tissue") if getattr(subject, name) is not None]
        extras += [f"targets:{'+'.join(subject.targets)}"] if subject.targets else []
        print(f"{files.name:24s} {files.layout:9s} r={''.join(map(str, subject.indicator(modalities)))} "
              f"{subset_label(present):20s} grid={grid.shape} zooms={tuple(round(z, 3) for z in grid.zooms)} "
              f"{' '.join(extras)}")
    print(f"{len(subjects)} subjects, modalities {','.join(modalities)}; patterns:")
    for present, count in sorted(patterns.items(), key=lambda item: -item[1]):
        print(f"  {subset_label(present):24s} {count}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    print("mmhvae demo: the shipped model is not available yet (it comes with the model issue).")
    print("When it lands, this command will simulate a held-out phantom cohort, predict every modality from")
    print("every input subset for one subject, and write NIfTI outputs, a figure and a PSNR/SSIM table.")
    return 0


def run_planned(args: argparse.Namespace) -> int:
    raise InputError(f"'mmhvae {args.verb}' is not available yet in version {__version__}: "
                     f"it arrives with {PLANNED_VERBS[args.verb]}")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmhvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmhvae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    check = verbs.add_parser("check", help="validate a data folder: subjects, missingness patterns, grids")
    check.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    check.add_argument("--modalities", type=_modality_set, default=ModalitySet(PAPER_MODALITIES),
                       help="comma-separated modality keys (default: us,t2,t1c,flair)")
    check.add_argument("--resample-to", metavar="MOD", default=None,
                       help="resample every image onto this modality's grid instead of refusing mismatches")
    check.add_argument("--nan-to-num", action="store_true", help="replace NaN/inf voxels instead of refusing")
    check.set_defaults(func=run_check)

    demo = verbs.add_parser("demo", help="the main job on the embedded default (see README)")
    demo.set_defaults(func=run_demo)

    for verb, what in PLANNED_VERBS.items():
        planned = verbs.add_parser(verb, help=f"not available yet: {what}", add_help=True)
        planned.add_argument("rest", nargs=argparse.REMAINDER)
        planned.set_defaults(func=run_planned)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "resample_to") and args.resample_to:
        from mmhvae.modalities import require_key

        try:
            args.resample_to = require_key(args.resample_to)
        except InputError as exc:
            parser.error(str(exc))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.func(args) or 0)
    except InputError as exc:
        print(f"mmhvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmhvae: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"mmhvae: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
