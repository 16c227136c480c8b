"""The one error type that the command line turns into exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage: the CLI prints one line naming the file and the problem, then exits 2."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
