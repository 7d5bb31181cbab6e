"""What editx says when it will not run: each problem one line naming file, row and field.

The errors are Click exceptions (exit code 2 for bad usage, 1 for a run that could not
finish its bookkeeping), so the CLI lets Click show them;
everything below the CLI raises them without knowing it is behind a command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

MAX_SHOWN = 50


def one_line(e: BaseException) -> str:
    """An exception as a log or report line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


@dataclass(frozen=True)
class Problem:
    source: str
    row: int | None  # None: the whole file or its header
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f": row {self.row}"
        if self.field:
            label = self.field if self.field.startswith("--") else f"field '{self.field}'"
            where += f", {label}"
        return f"{where}: {self.message}"


class InvalidInput(click.ClickException):
    """Bad usage or an invalid manifest: the run stops before anything runs (exit 2)."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

    def show(self, file=None) -> None:
        for p in self.problems[:MAX_SHOWN]:
            click.echo(f"error: {p}", err=True)
        if len(self.problems) > MAX_SHOWN:
            click.echo(f"error: ... and {len(self.problems) - MAX_SHOWN} more", err=True)


class UsageError(click.ClickException):
    """A bad option, found after Click's own parsing (exit 2)."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class RunFailed(click.ClickException):
    """The tasks ran but the run could not finish (the report could not be written): exit 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)
