"""Where a batch's plans go: the sinks, each applying them inside the batch's transaction.

A ``Sink`` takes the batch's (delivery, plan) pairs and what the sinks before it found, writes
its tables on the connection it is given (it never commits), and adds what the sinks after it
need. ``in_lock_order`` lists the sinks in the order every batch applies them, and so locks
their tables in: the warehouse, then the ledger, then the Salesforce outbox, then the mappings'
notifications. One order for every batch is why concurrent batches cannot deadlock. Another destination is another sink in
that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from sqlalchemy.engine import Connection

from sync.core.clock import Clock
from sync.mapping import Notice, Plan
from sync.rules.records import RecordState
from sync.settings import DEFAULT_PROGRAM
from sync.store import ledger, notifications
from sync.store.inbox import DeliveryStatus, StoredDelivery
from sync.store.outbox import Outbox, OutboxChange
from sync.store.warehouse import Warehouse, WarehouseChange

class Work(NamedTuple):
    """A delivery of the batch and what its mapping made of it."""

    delivery: StoredDelivery
    plan: Plan


@dataclass
class Found:
    """What the sinks found so far in a batch (every delivery of it of one program), for the sinks after them."""

    #: The program the batch's deliveries belong to: every row the sinks write is its.
    program: str = DEFAULT_PROGRAM
    #: Each warehouse record the batch touched, in its merged state, by (table, key).
    states: dict[tuple[str, str], RecordState] = field(default_factory=dict)
    #: The partners whose commission the batch changed.
    partners: set[str] = field(default_factory=set)


class Sink(Protocol):
    """A destination of plans."""

    def write(self, conn: Connection, work: Sequence[Work], found: Found) -> None:
        """Apply ``work`` on ``conn`` (the batch's transaction, not committed here), adding to ``found``."""


@dataclass(frozen=True)
class WarehouseSink:
    """The mapped tables: merges each plan's record change; finds the records' merged states."""

    warehouse: Warehouse

    def write(self, conn: Connection, work: Sequence[Work], found: Found) -> None:
        changes = [WarehouseChange(item.plan.change, item.delivery.id) for item in work if item.plan.change is not None]
        found.states.update(self.warehouse.apply_many(conn, changes, program=found.program))


@dataclass(frozen=True)
class LedgerSink:
    """The commission ledger: follows the warehouse's merged states; finds the partners it moved."""

    #: What time it is: when the entries are recorded.
    clock: Clock

    def write(self, conn: Connection, work: Sequence[Work], found: Found) -> None:
        found.partners |= ledger.settle_many(conn, settlements(work, found.states), self.clock(),
                                             program=found.program)


@dataclass(frozen=True)
class OutboxSink:
    """The Salesforce outbox: merges each plan's Salesforce record, and notes the partners whose
    commission changed (their totals go to Salesforce with the next flush)."""

    outbox: Outbox

    def write(self, conn: Connection, work: Sequence[Work], found: Found) -> None:
        self.outbox.apply_many(conn, [
            OutboxChange(item.plan.crm, item.plan.mapping.entity,
                         tuple(f.name for f in item.plan.mapping.salesforce.on_delete),
                         item.plan.crm_problem, item.delivery.received_at, entity_id=item.plan.key)
            for item in work
            if item.plan.crm is not None
        ], program=found.program)
        self.outbox.note_commission_change(conn, found.partners, program=found.program)


@dataclass(frozen=True)
class NotificationSink:
    """The messages the mappings' ``notify`` entries send: a row per delivery and entry, written
    only if absent (a delivery applied again sends nothing again), posted after the commit.

    A delivery that was already processed, applied again as it is by ``partnero-sync replay``,
    writes none: replaying history to fill a new column must not announce every old sale (a
    ``notify`` entry added since applies to deliveries from then on)."""

    #: What time it is: when the rows are written, and first due.
    clock: Clock

    def write(self, conn: Connection, work: Sequence[Work], found: Found) -> None:
        notifications.add(conn, [(item.delivery.id, notice) for item in work for notice in notices_written(item)],
                          self.clock(), program=found.program)


def notices_written(item: Work) -> tuple[Notice, ...]:
    """The messages ``NotificationSink`` writes for one delivery: its plan's, unless the delivery
    was already processed (``partnero-sync replay`` applying it again sends nothing)."""
    return () if item.delivery.status == DeliveryStatus.PROCESSED else item.plan.notices


def in_lock_order(warehouse: Warehouse, outbox: Outbox | None, clock: Clock) -> list[Sink]:
    """The sinks, in the order every batch applies them (no outbox: CRM sync is off)."""
    sinks: list[Sink] = [WarehouseSink(warehouse), LedgerSink(clock)]
    if outbox is not None:
        sinks.append(OutboxSink(outbox))
    sinks.append(NotificationSink(clock))
    return sinks


def settlements(work: Sequence[Work], states: dict[tuple[str, str], RecordState]) -> list[ledger.Settlement]:
    """What the batch tells the ledger about each transaction it touched.

    The ledger follows the state the warehouse keeps (``states``, merged by version: the same
    rank, time and fingerprint order, so the two never disagree on which state won). When that
    state is one of the batch's, its rewards are what should stand; when it is not, the batch
    held only older news, and only a refund changes what stands.
    """
    by_record: dict[tuple[str, str], list[Work]] = {}
    for item in work:
        change = item.plan.change
        if item.plan.mapping.ledger is not None and change is not None:
            by_record.setdefault((change.table, change.key), []).append(item)
    found = []
    for (table, key), items in sorted(by_record.items()):
        state = states[(table, key)]
        winner = next((item for item in items if item.plan.change.version == state.version), None)
        rewards = winner.plan.rewards if winner is not None else None
        if rewards is None and not state.tombstoned:
            continue  # older news: what stands already follows the newest state
        refund = next((item.delivery for item in items if item.plan.change.deleting
                       and (item.plan.change.version.at, item.plan.change.version.fingerprint) == state.deleted),
                      None)
        # The entries name the delivery that moved them: the winning state, else the refund.
        event_id = winner.delivery.id if rewards is not None else (refund or items[-1].delivery).id
        found.append(ledger.Settlement(
            transaction_key=key,
            rewards=rewards,
            refunded=state.tombstoned,
            changed_at=state.version.at if state.version is not None else state.deleted[0],
            refunded_at=state.deleted[0] if state.deleted is not None else None,
            event_id=event_id,
            refund_event_id=refund.id if refund is not None else None,
        ))
    return found
