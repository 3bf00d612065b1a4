"""Handing deliveries back to the workers: failed ones after a fix (``requeue-failed``), or one the
operator asks for (``/ops``'s Replay): their inbox rows back to pending, and a worker woken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sync.core.errors import TransientError
from sync.ops.progress import progressbar
from sync.pipeline.sweeper import Waker
from sync.store.inbox import DeliveryStatus, Inbox, RequeueAnswer, StoredDelivery


@dataclass
class RequeueResult:
    #: Rows set back to pending.
    requeued: int = 0
    #: Why Redis could not take the jobs (None: it could).
    redis_error: str | None = None
    #: Rows the current mappings still cannot apply, left failed: (inbox id, why).
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def enqueued(self) -> int:
        """Of the rows requeued, those a worker was woken for (all of them, unless Redis was away:
        then the sweeper)."""
        return 0 if self.redis_error is not None else self.requeued


def requeue_failed(inbox: Inbox, jobs: Waker, since: datetime | None = None, event_type: str | None = None,
                   batch: int = 1000, show_progress: bool = True,
                   still_failing: Callable[[StoredDelivery], str | None] | None = None,
                   program: str | None = None) -> RequeueResult:
    """Set the matching failed rows (of ``program``; None: of every program) back to pending,
    ``batch`` rows at a time, and wake a worker.

    The database is the record: a row set back to pending is applied whatever Redis does. When
    Redis cannot take the wake-up, the worker's sweeper wakes one once Redis answers, and
    ``redis_error`` says why. A row ``still_failing`` gives a reason for (``Processor.check``:
    the mappings still cannot apply it) is skipped, left failed with that reason, and reported;
    the others go on.
    """
    result = RequeueResult()
    total = inbox.count(since=since, event_type=event_type, status=DeliveryStatus.FAILED, program=program)
    with progressbar(total, "requeueing", show_progress) as bar:
        for batch_done in inbox.requeue_failed(since=since, event_type=event_type, batch=batch,
                                               still_failing=still_failing, program=program):
            rows = batch_done.rows
            result.requeued += len(rows)
            result.skipped += batch_done.skipped
            bar.update(len(rows) + len(batch_done.skipped))
    if result.requeued:
        try:
            jobs.wake(force=True)
        except TransientError as exc:
            result.redis_error = str(exc)
    return result


@dataclass(frozen=True)
class Asked:
    """What asking for one delivery to be applied again came to."""

    #: What the inbox found (``Inbox.requeue``): requeued, already pending, pruned or busy.
    found: str
    #: Why Redis could not take the wake-up (None: it could, or none was needed); the row is
    #: pending all the same, and the worker's sweeper wakes a worker for it.
    redis_error: str | None = None

    @property
    def queued(self) -> bool:
        """Whether the delivery now waits for a worker."""
        return self.found in (RequeueAnswer.REQUEUED, RequeueAnswer.ALREADY_PENDING)


def requeue_one(inbox: Inbox, jobs: Waker, event_id: int) -> Asked | None:
    """Hand inbox row ``event_id`` to the workers, who apply it with their mapping files, and wake
    one; None when there is no such row. Only a short statement on the row: it never waits for a
    lock nor applies anything, so a web request answers at once."""
    found = inbox.requeue(event_id)
    if found is None:
        return None
    asked = Asked(found)
    if asked.queued:
        try:
            jobs.wake(force=True)
        except TransientError as exc:
            asked = Asked(found, str(exc))
    return asked


def dry_run(inbox: Inbox, check: Callable[[StoredDelivery], str | None], since: datetime | None = None,
            event_type: str | None = None, program: str | None = None) -> tuple[int, list[tuple[int, str]]]:
    """What ``requeue_failed`` would do, changing nothing: how many failed rows (of ``program``;
    None: of every program) it would requeue, and the ones it would skip, as (inbox id, why)."""
    ready, skipped = 0, []
    for event in inbox.deliveries(since=since, event_type=event_type, status=DeliveryStatus.FAILED,
                                  program=program):
        reason = check(event)
        if reason is None:
            ready += 1
        else:
            skipped.append((event.id, reason))
    return ready, skipped
