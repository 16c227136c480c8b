"""The data verbs: `check` a data folder before training on it, `prepare` real volumes for training (orientation,
voxel size, crop, brain mask, harmonised targets), `simulate` a phantom cohort to train on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mmhvae.cli.common import add_nan_to_num, add_overwrite, add_seed, modality_set
from mmhvae.errors import refuse_to_overwrite
from mmhvae.modalities import ModalitySet, subset_label

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


def modalities_to_check(args: argparse.Namespace, subjects: list[SubjectFiles]) -> ModalitySet:
    """--modalities, or those found in the data (as `train` takes them), said on the first line."""
    from mmhvae.io.layouts import modalities_found, require_modalities_present

    if args.modalities is None:
        found = ModalitySet(modalities_found(subjects))
        print(f"modalities: {','.join(found)} (found in {args.data}; choose others with --modalities)")
        return found
    require_modalities_present(subjects, args.modalities.keys, args.data, "from --modalities",
                               "check those with --modalities {found}, or leave it out")
    return args.modalities


def run_check(args: argparse.Namespace) -> int:
    """Discover and load every subject of a data folder; print its missingness pattern and grid."""
    from mmhvae.io.layouts import discover_subjects
    from mmhvae.io.subjects import load_subject

    subjects = discover_subjects(args.data)
    modalities = modalities_to_check(args, subjects)
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


def run_prepare(args: argparse.Namespace) -> int:
    from mmhvae.preprocessing.real_volumes import PrepareSettings, prepare_data

    settings = PrepareSettings(spacing_mm=args.spacing, slice_axis=args.slice_axis, crop=args.crop,
                               margin_mm=args.margin, targets=not args.no_targets, resample_to=args.resample_to,
                               nan_to_num=args.nan_to_num)
    written = prepare_data(args.data, args.out, settings, overwrite=args.overwrite)
    subjects = sum(1 for path in written if path.name == "prepared.json")
    print(f"prepared {subjects} subjects into {args.out} (canonical layout; each prepared.json takes predictions "
          "back to the original grid and header)")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from mmhvae.phantom.cohort import simulate_cohort

    refuse_to_overwrite(args.out, args.overwrite, exists=(args.out / "cohort.json").exists(),
                        problem="the output folder already holds a cohort")
    simulate_cohort(args.out, subjects=args.subjects, modalities=args.modalities, size=args.size,
                    slices=args.slices, seed=args.seed, missing=args.missing, us_engine=args.us_engine,
                    us_probe=args.us_probe, preview=args.preview, first_index=args.first_index, layout=args.layout)
    print(f"wrote {args.subjects} subjects to {args.out} (cohort.json records seed and parameters)")
    if args.preview:
        print(f"preview: {args.preview}")
    return 0


def add_check(verbs: argparse._SubParsersAction) -> None:
    check = verbs.add_parser("check", help="validate a data folder: subjects, missingness patterns, grids")
    check.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    check.add_argument("--modalities", type=modality_set, default=None,
                       help="comma-separated modality keys r is taken over (default: those found, as train takes)")
    check.add_argument("--resample-to", metavar="MOD", default=None,
                       help="resample every image onto this modality's grid instead of refusing mismatches")
    add_nan_to_num(check)
    check.set_defaults(func=run_check)


def add_simulate(verbs: argparse._SubParsersAction) -> None:
    simulate = verbs.add_parser("simulate", help="write a seeded multimodal brain-tumour phantom cohort")
    simulate.add_argument("--out", required=True, type=Path, help="output data folder")
    simulate.add_argument("--layout", default="canonical", choices=["canonical", "brats"],
                          help="canonical (ultrasound and MR, the default) or brats (t1n, t1c, t2w, t2f as BraTS "
                               "names and stores them, skull-stripped, 240 mm x 240 mm x 155 mm)")
    simulate.add_argument("--subjects", type=int, default=20)
    simulate.add_argument("--modalities", default=None,
                          help="from us,t1,t1c,t2,flair,pd (default us,t2,t1c,flair; brats: t1,t1c,t2,flair)")
    simulate.add_argument("--size", type=int, default=64,
                          help="in-plane grid over 96 mm (64: 1.5 mm, 192: 0.5 mm); brats: over 240 mm (240: 1 mm)")
    simulate.add_argument("--slices", type=int, default=None,
                          help="sweep depth (default 0.75 x size); brats: axial slices (default 155/240 x size)")
    add_seed(simulate)
    simulate.add_argument("--missing", default=None,
                          help="remind (the default), complete (the default of brats), or MOD=P,... probabilities")
    simulate.add_argument("--us-engine", default="fast", choices=["fast", "simus"])
    simulate.add_argument("--us-probe", default="default", choices=["default", "alt"])
    simulate.add_argument("--first-index", type=int, default=0, help="index of the first subject (sub-NNN)")
    simulate.add_argument("--preview", type=Path, default=None, help="write a PNG of the first subject")
    add_overwrite(simulate, help="write into a folder that holds a cohort")
    simulate.set_defaults(func=run_simulate)


def spacing(text: str) -> float | None:
    """argparse type of --spacing: a voxel size in mm, or 'keep'."""
    if text.strip().lower() == "keep":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm or 'keep', got '{text}'") from None


def add_prepare(verbs: argparse._SubParsersAction) -> None:
    prepare = verbs.add_parser("prepare", help="make real volumes ready to train on: orientation, voxel size, crop, "
                                               "brain mask, harmonised targets; predict writes back on their grids")
    prepare.add_argument("--data", required=True, type=Path, help="data folder (any layout) or one subject folder")
    prepare.add_argument("--out", required=True, type=Path, help="writes OUT/<subject>/ in the canonical layout")
    prepare.add_argument("--spacing", type=spacing, default=1.0, metavar="MM",
                         help="the model's voxel size in mm (default 1, BraTS's and the brats preset's; the paper's "
                              "0.5), or 'keep'")
    prepare.add_argument("--slice-axis", default="axial", choices=["axial", "coronal", "sagittal", "stored"],
                         help="the axis the network slices along (default axial, for BraTS); stored keeps the "
                              "stored axes (an ultrasound sweep)")
    prepare.add_argument("--crop", default="brain", choices=["brain", "none"],
                         help="crop to the bounding box of the brain mask (of the ultrasound field of view when "
                              "there is one), or not")
    prepare.add_argument("--margin", type=float, default=4.0, metavar="MM", help="around the crop (default 4 mm)")
    prepare.add_argument("--no-targets", action="store_true",
                         help="write no harmonised targets/ (training then harmonises each time)")
    prepare.add_argument("--resample-to", metavar="MOD", default=None,
                         help="resample every image onto this modality's grid first instead of refusing mismatches")
    add_nan_to_num(prepare)
    add_overwrite(prepare, help="replace subjects prepared before")
    prepare.set_defaults(func=run_prepare)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `check`, `prepare` and `simulate` on the verbs of the `mmhvae` parser."""
    add_check(verbs)
    add_prepare(verbs)
    add_simulate(verbs)
