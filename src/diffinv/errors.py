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


class OptionRangeError(ConfigError):
    """A plug-in option outside its meaningful range (checked when the config is validated)."""


def check_range(
    owner: str, name: str, value: float, low: float | None = None, high: float | None = None
) -> None:
    """ConfigError unless ``low <= value <= high`` (either bound may be open)."""
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise OptionRangeError(
            f"{owner}: {name} must lie in {span}, got {value!r} (fix: give a value in {span})"
        )
