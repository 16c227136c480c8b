"""The `view` verb: an offline HTML page with synchronised NiiVue viewers of predictions, ground truth, error
and uncertainty, and the evaluation's tables and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmhvae.cli.common import add_overwrite, print_written


def run_view(args: argparse.Namespace) -> int:
    from mmhvae.viewer.page import build_view

    page = build_view(args.predictions, args.out, data=args.data, evaluation=args.eval, figures=args.figures,
                      title=args.title, overwrite=args.overwrite)
    print_written([page])
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `view` on the verbs of the `mmhvae` parser."""
    view = verbs.add_parser("view", help="HTML results page with synchronised in-browser NIfTI viewers (NiiVue)")
    view.add_argument("--predictions", required=True, type=Path, nargs="+",
                      help="folders written by predict (<subject>/<inputs>/<modality>.nii.gz or <subject>/...)")
    view.add_argument("--data", type=Path, default=None,
                      help="the subjects' data folder: ground truth (harmonised targets) and |error| maps")
    view.add_argument("--eval", type=Path, default=None, help="an evaluate output folder: its tables and figures")
    view.add_argument("--figures", type=Path, nargs="*", default=[], help="more PNG figures to show")
    view.add_argument("--title", default="mmhvae results")
    view.add_argument("--out", required=True, type=Path,
                      help="the page, e.g. report.html (its files go to report_files/ beside it)")
    add_overwrite(view)
    view.set_defaults(func=run_view)
