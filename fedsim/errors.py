"""Errors a user can cause, printed by the CLI as one line: `error: <where>: <what>; <fix>`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FedsimError(Exception):
    """A problem with user input (scenario, CLI arguments, files); exit code 2."""

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str = "") -> None:
        self.where, self.what, self.fix = where, what, fix
        self.also: list[FedsimError] = []  # further problems found in the same check, one line each
        super().__init__(self.line())

    def line(self) -> str:
        """One line, always: line breaks inside user-given names (a TOML key "a\\nb") are shown escaped."""
        text = f"{self.where}: {self.what}" if self.where else self.what
        text = f"{text}; {self.fix}" if self.fix else text
        return text.replace("\r", "\\r").replace("\n", "\\n")

    def lines(self) -> list[str]:
        """This problem's line and one per further problem."""
        return [self.line(), *(e.line() for e in self.also)]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class ScenarioError(FedsimError):
    """The scenario file or an override is invalid."""


class DataError(FedsimError):
    """A dataset cannot be loaded or partitioned as asked."""


class RunDirError(FedsimError):
    """A run directory is missing or unreadable."""


class StorageError(RunDirError):
    """A write in a run directory failed (disk full, read-only, permission denied). The write left nothing
    half-written and earlier files (the last checkpoint) are intact, so the run can be resumed once fixed."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """'did you mean X?' or the list of choices, for a fix message."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f"did you mean '{close[0]}'? (choose from: {', '.join(choices)})"
    return f"choose from: {', '.join(choices)}"


class ClientFailure(FedsimError):
    """Every client of a round failed, so the run cannot make progress."""


class NothingTrained(FedsimError):
    """Every round was skipped (too few clients answered): the run dir is complete, its model the initial one, and
    `result` its RunResult; exit code 1, since the input was valid but the run means nothing."""

    exit_code = 1
    result = None


class Diverged(FedsimError):
    """A round's loss or metrics were not finite (run.stop_on_nan): the run dir holds the rounds up to it, and
    `result` the RunResult of the run so far."""

    result = None
