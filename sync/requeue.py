"""Retrying failed deliveries after a fix: their inbox rows back to pending, and onto the queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sync.errors import TransientError
from sync.inbox import FAILED, Inbox
from sync.progress import progressbar
from sync.queue import JobQueue


@dataclass
class RequeueResult:
    #: Rows set back to pending.
    requeued: int = 0
    #: Of those, rows a worker was woken for (all of them, unless Redis was away: then the sweeper).
    enqueued: int = 0
    #: Why Redis could not take the jobs (None: it could).
    redis_error: str | None = None


def requeue_failed(inbox: Inbox, jobs: JobQueue, since: datetime | None = None, event_type: str | None = None,
                   batch: int = 1000, show_progress: bool = True) -> RequeueResult:
    """Set the matching failed rows back to pending, ``batch`` rows at a time, and wake a worker.

    The database is the record: a row set back to pending is applied whatever Redis does. When
    Redis cannot take the wake-up, the worker's sweeper wakes one once Redis answers, and
    ``redis_error`` says why.
    """
    result = RequeueResult()
    total = inbox.count(since=since, event_type=event_type, status=FAILED)
    with progressbar(total, "requeueing", show_progress) as bar:
        for rows in inbox.requeue_failed(since=since, event_type=event_type, batch=batch):
            result.requeued += len(rows)
            bar.update(len(rows))
    if result.requeued:
        try:
            jobs.wake(force=True)
            result.enqueued = result.requeued
        except TransientError as exc:
            result.redis_error = str(exc)
    return result
