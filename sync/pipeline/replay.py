"""Replaying stored deliveries through this process's mappings: ``partnero-sync replay``, with a
progress bar. (``/ops``'s button hands one to the workers instead: ``requeue.requeue_one``.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sync.core.errors import PermanentError
from sync.ops.progress import progressbar
from sync.store.inbox import DeliveryStatus, StoredDelivery

#: Why a pruned delivery is not replayed.
PRUNED = "its body was pruned, so there is nothing left to apply"


@dataclass(frozen=True)
class ReplayOutcome:
    """What replaying one delivery came to."""

    #: The row's status afterwards: processed, ignored or failed (unchanged when not replayed).
    status: str
    #: Why it failed, or why it was not replayed.
    reason: str | None = None
    replayed: bool = True


def replay_one(services, event: StoredDelivery) -> ReplayOutcome:
    """Apply one stored delivery again; its inbox row records the outcome. Idempotent.

    A pruned delivery is left as it is. Raises ``TransientError`` when the database is away
    (the row is left as it was: nothing passing ever fails a delivery).
    """
    if event.pruned:
        return ReplayOutcome(event.status, PRUNED, replayed=False)
    try:
        status = services.processor.process(event)
    except PermanentError as exc:  # the processor has recorded it on the row
        return ReplayOutcome(DeliveryStatus.FAILED, str(exc))
    return ReplayOutcome(status)


@dataclass
class ReplayResult:
    """What ``replay`` came to: how many rows it found, and how each one ended."""

    total: int = 0
    processed: int = 0
    ignored: int = 0
    #: Deliveries whose raw body ``prune`` dropped: skipped, they can no longer be applied.
    pruned: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


def replay(services, since: datetime | None = None, event_type: str | None = None,
           show_progress: bool = True) -> ReplayResult:
    """Apply every matching inbox row again; safe to run any number of times.

    Pruned rows are counted and skipped, never applied or marked failed: what they wrote stays.
    """
    inbox = services.inbox
    result = ReplayResult()
    total = inbox.count(since=since, event_type=event_type)
    with progressbar(total, "replaying", show_progress) as bar:
        for event in inbox.deliveries(since=since, event_type=event_type):
            result.total += 1
            outcome = replay_one(services, event)
            if not outcome.replayed:
                result.pruned += 1
            elif outcome.status == DeliveryStatus.PROCESSED:
                result.processed += 1
            elif outcome.status == DeliveryStatus.IGNORED:
                result.ignored += 1
            else:
                result.failed.append((event.id, outcome.reason or ""))
            bar.update(1)
    return result
