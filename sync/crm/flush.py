"""Sending the outbox to Salesforce: parents first, 200 records a call, an outcome per record."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.engine import Engine

from sync import ledger, metrics
from sync.crm.client import COLLECTION_LIMIT, SalesforceClient
from sync.crm.outbox import FAILED, PENDING, SYNCED, UNAVAILABLE, WAITING, Outbox, Pending, wire
from sync.errors import TransientError
from sync.mapping import MappingSet
from sync.mapping.spec import Mapping

log = logging.getLogger(__name__)

#: Seconds before a record is tried again after a transient refusal or a missing parent.
RECORD_RETRY_DELAYS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def record_backoff(attempts: int) -> float:
    base = RECORD_RETRY_DELAYS[min(attempts, len(RECORD_RETRY_DELAYS) - 1)]
    return base + random.uniform(0, base / 5)


@dataclass
class FlushReport:
    calls: int = 0
    synced: int = 0
    waiting: int = 0
    failed: int = 0
    retrying: int = 0
    by_object: dict[str, int] = field(default_factory=dict)

    def add(self, other: FlushReport) -> None:
        self.calls += other.calls
        self.synced += other.synced
        self.waiting += other.waiting
        self.failed += other.failed
        self.retrying += other.retrying
        for obj, n in other.by_object.items():
            self.by_object[obj] = self.by_object.get(obj, 0) + n

    def summary(self) -> str:
        return (f"{self.synced} synced, {self.waiting} waiting for a parent, {self.retrying} to retry, "
                f"{self.failed} refused, in {self.calls} calls")


class Flusher:
    def __init__(self, engine: Engine, mappings: MappingSet, client: SalesforceClient, outbox: Outbox | None = None):
        self.engine = engine
        self.mappings = mappings
        self.client = client
        self.outbox = outbox or Outbox()

    def flush(self, max_calls: int | None = None, on_progress: Callable[[FlushReport], None] | None = None) -> FlushReport:
        """Send everything that is due. Raises ``TransientError`` if Salesforce cannot be reached;
        what was sent before that is recorded, and the rest is tried again later."""
        report = FlushReport()
        self._fold_commissions()
        for mapping in self.mappings.salesforce_objects():
            while max_calls is None or report.calls < max_calls:
                sent = self._send_batch(mapping, report)
                if on_progress is not None:
                    on_progress(report)
                if sent < COLLECTION_LIMIT:
                    break
        return report

    def _fold_commissions(self) -> None:
        for mapping in self.mappings.salesforce_objects():
            if mapping.salesforce.commission_total:
                with self.engine.begin() as conn:
                    self.outbox.fold_commission_changes(conn, mapping.salesforce.object, mapping.entity)

    def _send_batch(self, mapping: Mapping, report: FlushReport) -> int:
        target = mapping.salesforce
        with self.engine.begin() as conn:
            rows = self.outbox.due(conn, target.object, COLLECTION_LIMIT)
            totals = {}
            if rows and target.commission_total:
                totals = ledger.commission_owed(conn, [r.external_id for r in rows])
        if not rows:
            return 0
        try:
            # A mapping that opted in deletes tombstoned records; by default they are only updated.
            deletes = [r for r in rows if target.hard_delete and r.tombstoned]
            upserts = [r for r in rows if r not in deletes]
            if upserts:
                metrics.SALESFORCE_CALLS.inc(object=target.object, kind=metrics.UPSERT)
            outcomes = dict(zip(
                [r.id for r in upserts],
                self.client.upsert(target.object, target.external_id,
                                   [self._record(mapping, row, totals) for row in upserts]),
            ))
            for row in deletes:
                metrics.SALESFORCE_CALLS.inc(object=target.object, kind=metrics.DELETE)
                outcomes[row.id] = self.client.delete(target.object, target.external_id, row.external_id)
        except TransientError as exc:
            metrics.SALESFORCE_REFUSALS.inc(len(rows), object=target.object, code=UNAVAILABLE)
            with self.engine.begin() as conn:
                self.outbox.postpone(conn, rows, record_backoff(min(r.attempts for r in rows)), str(exc))
            raise
        report.calls += (1 if upserts else 0) + len(deletes)
        parent_arrived = False
        recorded = []
        for row in rows:
            outcome = outcomes[row.id]
            if not outcome.success:  # whatever then becomes of the record: waits, retries or fails
                metrics.SALESFORCE_REFUSALS.inc(object=target.object, code=outcome.code)
            if outcome.success:
                recorded.append((row, SYNCED, outcome.id, None, None, None))
                report.synced += 1
                parent_arrived = True
            elif outcome.missing_parent:
                recorded.append((row, WAITING, None, outcome.code, outcome.message, record_backoff(row.attempts)))
                report.waiting += 1
            elif outcome.transient:
                recorded.append((row, PENDING, None, outcome.code, outcome.message, record_backoff(row.attempts)))
                report.retrying += 1
            else:
                recorded.append((row, FAILED, None, outcome.code, outcome.message, None))
                report.failed += 1
                log.warning("Salesforce refused %s %s: %s: %s", row.object, row.external_id,
                            outcome.code, outcome.message)
        with self.engine.begin() as conn:
            self.outbox.record(conn, recorded)
            if parent_arrived and self._is_parent(target.object):
                self.outbox.wake_waiting(conn)
        report.by_object[target.object] = report.by_object.get(target.object, 0) + len(rows)
        return len(rows)

    def _record(self, mapping: Mapping, row: Pending, totals: dict[str, Decimal]) -> dict:
        target = mapping.salesforce
        record = {name: value for name, value in row.fields.items()
                  if not (name.endswith("__r") and value is None)}  # no parent given: leave the lookup alone
        record[target.external_id] = row.external_id
        if target.commission_total:
            record[target.commission_total] = wire(totals.get(row.external_id, Decimal(0)))
        return record

    def _is_parent(self, object_name: str) -> bool:
        return any(
            reference.object == object_name
            for m in self.mappings.salesforce_objects()
            for reference in m.salesforce.references
        )
