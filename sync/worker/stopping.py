"""How a running job learns that it should stop: RQ's time-out interrupting it, or its worker asked
to stop (SIGTERM), so that a long job (a drain, a flush, a backfill slice) wraps up between steps."""

from __future__ import annotations

import threading

from rq.timeouts import JobTimeoutException

#: What RQ raises inside a job to interrupt it (its time-out): never the fault of the data in hand.
INTERRUPTIONS: tuple[type[BaseException], ...] = (JobTimeoutException,)

#: Set when the worker is asked to stop (``sync.worker.queues.PartneroWorker``).
_stopping = threading.Event()


def request_stop() -> None:
    """This process's worker was asked to stop: the job in hand should wrap up."""
    _stopping.set()


def stop_requested() -> bool:
    """Whether this process's worker was asked to stop, so the job in hand should wrap up."""
    return _stopping.is_set()
