"""Progress for the operator's long commands: a bar where the amount of work is known (replay,
requeue-failed, prune), a line where it is not (backfill, reconcile); and spans of time as a
person reads them."""

from __future__ import annotations

import sys
import time

import click


def progressbar(total: int, label: str, show: bool = True):
    """click's progress bar over ``total`` items; drawn only on a terminal, never when ``show`` is False."""
    return click.progressbar(length=total, label=label, show_pos=True, file=None if show else _Null())


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class StatusLine:
    """One line of progress: redrawn in place on a terminal; elsewhere (a log), printed as a line
    of its own at most every ``every`` seconds, or not at all (``every`` None). ``err``: on
    standard error."""

    def __init__(self, *, err: bool = False, every: float | None = None) -> None:
        self.err = err
        self.every = every
        self.tty = (sys.stderr if err else sys.stdout).isatty()
        self.last = float("-inf")
        self.drawn = False

    def show(self, text: str) -> None:
        if self.tty:
            click.echo("\r" + text + "\x1b[K", nl=False, err=self.err)
            self.drawn = True
        elif self.every is not None and time.monotonic() - self.last >= self.every:
            click.echo(text, err=self.err)
            self.last = time.monotonic()

    def end(self, keep: bool = True) -> None:
        """Leave the terminal's line: kept as it was last drawn, or cleared."""
        if self.drawn:
            click.echo("" if keep else "\r\x1b[K", nl=keep, err=self.err)


def duration(seconds: float) -> str:
    """A span of time as a person reads it: 45 s, 12 min, 3.5 h, 2.0 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
