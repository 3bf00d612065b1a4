"""The sweeper: wakes a worker when stored deliveries wait with nobody on their way to them (Redis
was down when they arrived, a wake-up was lost, a worker died holding them)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol

from sync.store.inbox import Inbox

log = logging.getLogger(__name__)


class Waker(Protocol):
    """What the sweeper asks of the job queue (``sync.worker.queues.JobQueue``): wake a worker."""

    def wake(self, *, force: bool = False) -> bool: ...


def sweep(inbox: Inbox, jobs: Waker, older_than: timedelta) -> int:
    """Wake a worker if pending rows that nobody holds have waited longer than ``older_than``;
    returns how many such rows there are. The worker claims them like any others."""
    waiting = inbox.claimable(older_than)
    if waiting:
        jobs.wake(force=True)
        log.warning("sweeper: %d pending deliveries waited with nobody on their way; woke a worker", waiting)
    return waiting
