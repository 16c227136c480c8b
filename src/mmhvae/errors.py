"""The one error type that the command line turns into exit code 2, and the refusal to overwrite outputs."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage: the CLI prints one line naming the file and the problem, then exits 2."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def refuse_to_overwrite(path: str | Path, overwrite: bool, exists: bool | None = None,
                        problem: str = "already exists") -> None:
    """The one refusal of every verb that writes: earlier outputs at `path` are kept unless `--overwrite`.

    `exists` says whether there is something to keep (default: whether `path` exists); `problem` names it,
    e.g. "the output folder already has results".
    """
    if not overwrite and (Path(path).exists() if exists is None else exists):
        raise InputError(f"{problem} (use --overwrite)", path)
