"""What every verb of the command line shares: one-line usage errors, the options several verbs declare alike,
and how warnings and progress messages reach the user.

Only torch-free modules are imported here, so that `mmhvae --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from mmhvae.errors import InputError
from mmhvae.methods import METHODS
from mmhvae.modalities import ModalitySet

# The default of the --methods options: every method, as one comma-separated value.
ALL_METHODS = ",".join(METHODS)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def modality_set(text: str) -> ModalitySet:
    """argparse type of a comma-separated modality list, e.g. us,t2,t1c,flair."""
    try:
        return ModalitySet.parse(text)
    except InputError as exc:  # argparse turns this into a one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model file or run folder")


def add_temperature(parser: argparse.ArgumentParser, default: float = 0.5, help: str | None = None) -> None:
    parser.add_argument("--temperature", type=float, default=default, help=help)


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)


def add_device(parser: argparse.ArgumentParser, choices: tuple[str, ...] | None = None,
               help: str | None = "cpu, cuda or auto") -> None:
    parser.add_argument("--device", default="cpu", choices=choices, help=help)


def add_no_lpips(parser: argparse.ArgumentParser, help: str = "skip LPIPS (the slowest metric)") -> None:
    parser.add_argument("--no-lpips", action="store_true", help=help)


def add_nan_to_num(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nan-to-num", action="store_true", help="replace NaN/inf voxels instead of refusing")


def add_overwrite(parser: argparse.ArgumentParser, help: str | None = "replace existing outputs") -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def print_written(paths: Iterable[Path | str]) -> None:
    """One 'wrote PATH' line per file a verb wrote."""
    print("\n".join(f"wrote {path}" for path in paths))


def warning_source(filename: str) -> str:
    """The installed package a warning was raised in ("mmhvae" for ours and for code outside any package)."""
    parts = Path(filename).parts
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            return parts[parts.index(folder) + 1].removesuffix(".py")
    return "mmhvae"


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors (no source line); a library's warning names the library."""
    source = warning_source(str(filename))
    origin = "" if source == "mmhvae" else f" (from {source})"
    print(f"mmhvae: warning{origin}: {message}", file=sys.stderr)


def show_warnings_to_users() -> None:
    """Our warnings and the libraries' run-time ones, once per place; not the libraries' deprecation notices.

    Those address the developers of the code that calls a library (Lightning calling torch, say), not whoever
    runs `mmhvae`, and they used to appear in every training log as if they were ours.
    """
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"mmhvae(\.|$)")
    warnings.showwarning = print_warning


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler on sys.stdout as it is when each message comes, not as it was when the handler was made.

    `main` may run several times in one process (tests, notebooks) while sys.stdout is swapped in between
    (pytest's capsys, contextlib.redirect_stdout); a handler holding the first stdout would write into a
    closed stream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.setLevel(logging.INFO)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stdout


def show_progress_messages() -> logging.Handler:
    """Show the library's progress messages (INFO of the `mmhvae` logger) on stdout, one line each.

    Replaces the handler an earlier call attached, so that calling `main` again in one process does not print
    each line twice; records still propagate to the root logger for whoever configured it.
    """
    logger = logging.getLogger("mmhvae")
    for handler in [h for h in logger.handlers if isinstance(h, StdoutHandler)]:
        logger.removeHandler(handler)
    handler = StdoutHandler()
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
