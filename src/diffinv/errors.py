"""User-facing errors: one line naming the file or key and the fix."""

from __future__ import annotations


class DiffinvError(Exception):
    """Base class for errors that the CLI reports as one line and exit code 2."""


class InputError(DiffinvError):
    """Bad input data: names the file (and dataset, variable or line) and the fix."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class ConfigError(DiffinvError):
    """Bad configuration: names the key and the fix."""
