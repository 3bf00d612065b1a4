"""Processing stored deliveries: mapping, warehouse, ledger and inbox in one SQL transaction.

A batch of deliveries shares the transaction (one commit for many), each delivery in a savepoint
of its own so that one the database refuses does not take the others with it. Deliveries are
applied in the order of the records they touch, so concurrent batches lock rows in one global
order and cannot deadlock; any order gives the same result, since every write merges by version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync import ledger
from sync.crm.outbox import Outbox
from sync.db import is_transient
from sync.envelope import MalformedDelivery
from sync.errors import PermanentError, TransientError
from sync.inbox import IGNORED, PROCESSED, Event, Inbox
from sync.mapping import FieldProblem, MappingSet, Plan, parse_document, plan
from sync.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    processed: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.processed)} processed, {len(self.ignored)} ignored, {len(self.failed)} failed"


@dataclass
class Processor:
    engine: Engine
    inbox: Inbox
    mappings: MappingSet
    warehouse: Warehouse
    #: Where Salesforce writes wait to be sent; None while CRM sync is off.
    outbox: Outbox | None = None

    def process(self, event: Event) -> str:
        """Apply one delivery; returns its new status. Raises when it cannot be applied."""
        result = self.process_batch([event])
        if event.id in result.failed:
            raise PermanentError(result.failed[event.id])
        return IGNORED if event.id in result.ignored else PROCESSED

    def process_batch(self, events: list[Event]) -> BatchResult:
        """Apply ``events`` and record each one's outcome on its inbox row.

        Applying a delivery again changes nothing: every write merges by version and the ledger's
        constraints refuse a second booking. Raises ``TransientError`` when the database is away
        (then nothing of the batch is committed).
        """
        result = BatchResult()
        work: list[tuple[Event, Plan]] = []
        for event in events:
            try:
                planned = self._plan(event)
            except (MalformedDelivery, FieldProblem) as exc:
                result.failed[event.id] = str(exc)
                continue
            if planned is None:
                result.ignored.append(event.id)
            else:
                work.append((event, planned))
        work.sort(key=lambda item: _lock_order(item[1]))

        try:
            with self.engine.begin() as conn:
                for event, planned in work:
                    try:
                        with conn.begin_nested():
                            self._apply(conn, event, planned)
                    except sa.exc.SQLAlchemyError as exc:
                        if is_transient(exc):
                            raise
                        result.failed[event.id] = f"database refused the write: {_first_line(exc)}"
                    else:
                        result.processed.append(event.id)
                self.inbox.mark_done(result.processed, conn)
                self.inbox.mark_done(result.ignored, conn, status=IGNORED)
                self.inbox.mark_failures(result.failed, conn)
        except sa.exc.SQLAlchemyError as exc:
            # A lost connection, a deadlock, a lock timeout: the next try finds the rows as they were.
            raise TransientError(f"database: {type(exc).__name__}: {_first_line(exc)}") from exc
        return result

    def _plan(self, event: Event) -> Plan | None:
        try:
            document = parse_document(event.body)
        except ValueError as exc:
            raise MalformedDelivery("body is not valid JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise MalformedDelivery('delivery has no "data" object')
        mapping = self.mappings.for_event(event.event_type)
        if mapping is None:
            return None
        return plan(mapping, document, event.fingerprint)

    def _apply(self, conn: Connection, event: Event, planned: Plan) -> None:
        change = planned.change
        if change is None:
            return
        state = self.warehouse.apply(conn, change, event.id)
        partners: set[str] = set()
        if planned.rewards:
            ledger.book(conn, change.key, planned.rewards, event.id)
            partners.update(r.partner_id for r in planned.rewards)
        if planned.mapping.ledger is not None and state.tombstoned:
            # Also when the sale arrives after its refund: it is reversed at once.
            partners.update(ledger.reverse(conn, change.key, state.deleted[0], event.id))
        if self.outbox is not None:
            if planned.crm is not None:
                target = planned.mapping.salesforce
                self.outbox.apply(conn, planned.crm, planned.mapping.entity, [f.name for f in target.on_delete])
            if partners:
                self.outbox.note_commission_change(conn, partners)


def _lock_order(planned: Plan) -> tuple:
    change = planned.change
    return (change.table, change.key, change.version) if change is not None else ("", "", None)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
