"""The `mmhvae` command: each verb is a thin wrapper over a Python function.

Exit codes (design.md): 0 success; 2 bad input or usage, one line on stderr naming the file and the
problem; 1 unexpected internal error (traceback only with --debug); 130 interrupted.
The verbs are declared by family in the modules beside this one; each imports its implementation only when
it runs, so that `mmhvae --help` answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from mmhvae import __version__
from mmhvae.allocator import keep_freed_memory
from mmhvae.cli import analyses, data, downstream, evaluation, inference, performance, training, viewer
from mmhvae.cli.common import OneLineParser, show_progress_messages, show_warnings_to_users
from mmhvae.errors import InputError
from mmhvae.modalities import require_key

VERB_FAMILIES = (data, training, inference, evaluation, analyses, downstream, performance, viewer)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmhvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmhvae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for family in VERB_FAMILIES:
        family.add_parsers(verbs)
    return parser


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of one call; a --resample-to modality is checked here, as a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resample_to", None):
        try:
            args.resample_to = require_key(args.resample_to)
        except InputError as exc:
            parser.error(str(exc))
    return args


def run_verb(args: argparse.Namespace) -> int:
    """Run the verb, turning its failures into one line on stderr and an exit code."""
    try:
        with warnings.catch_warnings():
            show_warnings_to_users()
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
        if isinstance(exc, OSError) and exc.filename is not None:
            # the file system refused a path given to us (an --out inside a file, a read-only folder, a full disk)
            print(f"mmhvae: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"mmhvae: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    keep_freed_memory()  # our own process: large CPU tensors reuse freed pages (allocator.py)
    show_progress_messages()
    return run_verb(args)


if __name__ == "__main__":
    sys.exit(main())
