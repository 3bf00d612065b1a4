"""What follows a batch of deliveries applied, wherever they were applied (a worker's job, or
``sync.partnero.resync`` for a backfill or ``reconcile --fix``): each outcome counted in the metrics and logged with the delivery's ids, the Salesforce
lag observed, and a flush asked for when anything was processed."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from sync.ops import logs, metrics
from sync.pipeline.processor import BatchResult
from sync.store.inbox import DeliveryStatus, StoredDelivery

log = logging.getLogger(__name__)


def report(events: Sequence[StoredDelivery], result: BatchResult, request_flush: Callable[[], None],
           committed_at: datetime) -> None:
    """Count, log and follow up ``result``, the outcome of applying ``events``, committed at ``committed_at``."""
    by_id = {e.id: e for e in events}
    lags: dict[str, list[float]] = defaultdict(list)
    for i in result.processed:
        lags[by_id[i].program].append((committed_at - by_id[i].received_at).total_seconds())
    for program, seconds in sorted(lags.items()):
        metrics.LAG.observe(seconds, program=program)
    for outcome, done in ((DeliveryStatus.PROCESSED, result.processed), (DeliveryStatus.IGNORED, result.ignored),
                          (DeliveryStatus.FAILED, result.failed), (metrics.RETRIED, result.waiting + result.untried)):
        for program, count in sorted(Counter(by_id[i].program for i in done).items()):
            metrics.ATTEMPTS.inc(count, outcome=outcome, program=program)

    def fields(event_id: int) -> dict:
        e = by_id[event_id]
        return logs.delivery_fields(e.id, e.event_type, e.fingerprint, e.program)

    for event_id in result.processed:
        log.info("delivery processed", extra=fields(event_id))
    for event_id in result.ignored:
        log.info("delivery ignored: no mapping handles its event type", extra=fields(event_id))
    for event_id, reason in sorted(result.failed.items()):
        log.error("delivery failed: %s", reason, extra=fields(event_id))
    for event_id in result.waiting:
        log.warning("delivery waited on a lock another database session holds; tried again later",
                    extra=fields(event_id))
    if result.processed:
        request_flush()
