"""Replaying stored deliveries through the current mappings, with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sync.envelope import MalformedDelivery
from sync.errors import SyncError
from sync.inbox import IGNORED, PROCESSED
from sync.mapping import FieldProblem
from sync.progress import progressbar


@dataclass
class ReplayResult:
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
        for event in inbox.events(since=since, event_type=event_type):
            result.total += 1
            bar.update(1)
            if event.pruned:
                result.pruned += 1
                continue
            try:
                status = services.processor.process(event)
            except (SyncError, MalformedDelivery, FieldProblem) as exc:
                result.failed.append((event.id, str(exc)))
                inbox.mark_failed(event.id, str(exc))
            else:
                if status == PROCESSED:
                    result.processed += 1
                elif status == IGNORED:
                    result.ignored += 1
    return result
