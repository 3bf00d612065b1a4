"""The sweeper: re-enqueues stored deliveries whose job was lost (Redis was down, a crash)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sync.inbox import Inbox
from sync.queue import JobQueue

log = logging.getLogger(__name__)


#: A row attempted this often without an outcome (its worker was killed mid-job, say) goes in a
#: job of its own: if it is what kills the worker, it no longer takes its batch-mates down with it.
ALONE_AFTER = 2


def sweep(inbox: Inbox, jobs: JobQueue, older_than: timedelta, batch: int = 1000) -> int:
    """Enqueue every pending row older than ``older_than`` that has no live job; returns how many.

    Rows whose job is still queued, running or waiting for a retry are left alone, so a backlog is
    never enqueued twice.
    """
    enqueued = 0
    after_id = 0
    while True:
        stale = inbox.stale_pending(older_than, limit=batch, after_id=after_id)
        if not stale:
            break
        waiting = jobs.waiting(event_id for event_id, _, _ in stale)
        lost = [(event_id, event, attempts) for event_id, event, attempts in stale if event_id not in waiting]
        jobs.enqueue_events([(i, e) for i, e, a in lost if a < ALONE_AFTER])
        for event_id, event, _ in (row for row in lost if row[2] >= ALONE_AFTER):
            jobs.enqueue_events([(event_id, event)])
        enqueued += len(lost)
        after_id = stale[-1][0]
        if len(stale) < batch:
            break
    if enqueued:
        log.warning("sweeper: re-enqueued %d pending deliveries whose job was missing", enqueued)
    return enqueued
