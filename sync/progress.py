"""The progress bar of the operator's long commands (replay, requeue-failed, prune)."""

from __future__ import annotations

import click


def progressbar(total: int, label: str, show: bool = True):
    """click's progress bar over ``total`` items; drawn only on a terminal, never when ``show`` is False."""
    return click.progressbar(length=total, label=label, show_pos=True, file=None if show else _Null())


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
