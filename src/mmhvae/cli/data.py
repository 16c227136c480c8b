"""The data verbs: `check` a data folder before training on it, `simulate` a phantom cohort to train on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mmhvae.cli.common import add_nan_to_num, add_overwrite, add_seed, modality_set
from mmhvae.errors import refuse_to_overwrite
from mmhvae.modalities import PAPER_MODALITIES, ModalitySet, subset_label

if TYPE_CHECKING:  # the io modules import numpy and nibabel: not for `mmhvae --help`
    from mmhvae.io.layouts import SubjectFiles
    from mmhvae.io.subjects import Subject


def subject_line(subject: Subject, files: SubjectFiles, modalities: ModalitySet) -> str:
    """One subject of `check`: name, layout, indicator r, present modalities, grid and extra files."""
    grid = subject.reference
    extras = [name for name in ("seg", "tissue") if getattr(subject, name) is not None]
    extras += [f"targets:{'+'.join(subject.targets)}"] if subject.targets else []
    return (f"{files.name:24s} {files.layout:9s} r={''.join(map(str, subject.indicator(modalities)))} "
            f"{subset_label(subject.present(modalities)):20s} grid={grid.shape} "
            f"zooms={tuple(round(z, 3) for z in grid.zooms)} {' '.join(extras)}")


def run_check(args: argparse.Namespace) -> int:
    """Discover and load every subject of a data folder; print its missingness pattern and grid."""
    from mmhvae.io.layouts import discover_subjects
    from mmhvae.io.subjects import load_subject

    modalities = args.modalities
    subjects = discover_subjects(args.data)
    patterns: dict[tuple[str, ...], int] = {}
    for files in subjects:
        subject = load_subject(files, modalities, resample_to=args.resample_to, nan_to_num=args.nan_to_num)
        present = subject.present(modalities)
        patterns[present] = patterns.get(present, 0) + 1
        print(subject_line(subject, files, modalities))
    print(f"{len(subjects)} subjects, modalities {','.join(modalities)}; patterns:")
    for present, count in sorted(patterns.items(), key=lambda item: -item[1]):
        print(f"  {subset_label(present):24s} {count}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from mmhvae.phantom.cohort import simulate_cohort

    refuse_to_overwrite(args.out, args.overwrite, exists=(args.out / "cohort.json").exists(),
                        problem="the output folder already holds a cohort")
    simulate_cohort(args.out, subjects=args.subjects, modalities=args.modalities, size=args.size,
                    slices=args.slices, seed=args.seed, missing=args.missing, us_engine=args.us_engine,
                    us_probe=args.us_probe, preview=args.preview, first_index=args.first_index)
    print(f"wrote {args.subjects} subjects to {args.out} (cohort.json records seed and parameters)")
    if args.preview:
        print(f"preview: {args.preview}")
    return 0


def add_check(verbs: argparse._SubParsersAction) -> None:
    check = verbs.add_parser("check", help="validate a data folder: subjects, missingness patterns, grids")
    check.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    check.add_argument("--modalities", type=modality_set, default=ModalitySet(PAPER_MODALITIES),
                       help="comma-separated modality keys (default: us,t2,t1c,flair)")
    check.add_argument("--resample-to", metavar="MOD", default=None,
                       help="resample every image onto this modality's grid instead of refusing mismatches")
    add_nan_to_num(check)
    check.set_defaults(func=run_check)


def add_simulate(verbs: argparse._SubParsersAction) -> None:
    simulate = verbs.add_parser("simulate", help="write a seeded multimodal brain-tumour phantom cohort")
    simulate.add_argument("--out", required=True, type=Path, help="output data folder (canonical layout)")
    simulate.add_argument("--subjects", type=int, default=20)
    simulate.add_argument("--modalities", default="us,t2,t1c,flair", help="from us,t1,t1c,t2,flair,pd")
    simulate.add_argument("--size", type=int, default=64, help="in-plane grid over 96 mm (64: 1.5 mm, 192: 0.5 mm)")
    simulate.add_argument("--slices", type=int, default=None, help="sweep depth (default 0.75 x size)")
    add_seed(simulate)
    simulate.add_argument("--missing", default="remind", help="remind, complete, or MOD=P,... probabilities")
    simulate.add_argument("--us-engine", default="fast", choices=["fast", "simus"])
    simulate.add_argument("--us-probe", default="default", choices=["default", "alt"])
    simulate.add_argument("--first-index", type=int, default=0, help="index of the first subject (sub-NNN)")
    simulate.add_argument("--preview", type=Path, default=None, help="write a PNG of the first subject")
    add_overwrite(simulate, help="write into a folder that holds a cohort")
    simulate.set_defaults(func=run_simulate)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `check` and `simulate` on the verbs of the `mmhvae` parser."""
    add_check(verbs)
    add_simulate(verbs)
