"""One root error and its three kinds, so each failure is classified once and acted on once.

The adapters that meet a failure (the store, the job queue, the Salesforce and Partnero clients)
raise these, and what a kind means is decided where the work is scheduled, not in one place:
``sync.worker.jobs`` for a job (retry later with backoff, or fail), ``sync.pipeline.processor``
for one delivery that waits on a lock, ``sync.salesforce.schedule`` for a flush and
``sync.salesforce.flush`` for one record, ``sync.partnero.api`` for its own calls (it waits and
tries again), ``app.webhooks`` for a delivery being received (503). Start-up stops on a
``ConfigurationError``.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class SyncError(Exception):
    """Root of every error partnero-sync raises on purpose."""


class TransientError(SyncError):
    """Retry later: timeouts, lost connections, a database or server that is briefly away."""


class PermanentError(SyncError):
    """Give up on this record: retrying the same input cannot succeed."""


class ConfigurationError(SyncError):
    """The configuration is wrong; the process must not start until a person fixes it."""


def caused_by(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """The error of ``kind`` that ``exc`` is, or that it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
