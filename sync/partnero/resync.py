"""Bringing listed objects in: compare a page of Partnero's list with what is held, and apply the
objects that differ through the pipeline every webhook takes.

What differs becomes deliveries (``sync.rules.listed``) stored in the inbox like any webhook's,
then applied at once, in this process, by the processor (warehouse, ledger and Salesforce outbox
in one transaction; each failure recorded on its own row, with its reason). An object that is
already held as listed, or older than what is held, is left alone: nothing is stored for it, so a
second run changes nothing. Rows this process could not apply (it was killed meanwhile) stay
pending for the workers' sweeper.

A ``Resync`` is of one program (the one whose API key listed the objects): it plans them with
that program's mappings, compares them with that program's records only, and stores them as that
program's deliveries, which the processor applies as that program's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sync.core.envelope import MalformedDelivery
from sync.mapping import FieldProblem, MappingSet, Plan, plan
from sync.pipeline import outcomes
from sync.rules import drift, listed
from sync.rules.drift import Drift
from sync.settings import DEFAULT_PROGRAM
from sync.store import ledger
from sync.store.inbox import Delivery, DeliveryStatus, StoredDelivery


@dataclass
class Examined:
    """A page compared with what is held: what drifts, and the deliveries that would fix it."""

    entity: str
    drifts: list[Drift] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    #: Objects held exactly as listed (or newer).
    unchanged: int = 0
    #: Objects left out: changed before ``since`` (a list no mapping loads is an error, not skipped).
    skipped: int = 0
    #: The record keys of the objects seen, for finding what is held but no longer listed.
    seen: list[str] = field(default_factory=list)
    #: The plans made of the deliveries' bodies, by fingerprint: applying them does not plan again.
    plans: dict[str, Plan] = field(default_factory=dict)


@dataclass
class Applied:
    """What ``Resync.apply`` came to: deliveries processed, and those that failed on their rows."""

    processed: int = 0
    failed: int = 0


class Resync:
    """Compares one program's listed objects with what is held of that program, and applies those
    that differ as that program's deliveries."""

    def __init__(self, services, source: str, *, program: str = DEFAULT_PROGRAM, mappings: MappingSet | None = None):
        self.services = services
        #: Written into each delivery ("backfill", "reconcile"), for whoever reads it later.
        self.source = source
        #: The program whose API listed the objects: what they are compared with, and whose deliveries they become.
        self.program = program
        #: The program's mappings (None: the process's, ``services.mappings``).
        self.mappings: MappingSet = mappings if mappings is not None else services.mappings

    def examine(self, entity: str, objects: Sequence[dict[str, Any]], observed_at: datetime,
                since: datetime | None = None) -> Examined:
        """Compare ``objects`` (a page of the list ``entity``, asked for at ``observed_at``) with
        what is held; objects changed before ``since`` are skipped. ``ConfigurationError`` when no
        mapping loads the list."""
        found = Examined(entity)
        mapping = listed.mappings_for(self.mappings, (entity,))[entity]
        salesforce = self.services.processor.outbox is not None
        candidates = []
        for obj in objects:
            if not isinstance(obj, dict):
                found.skipped += 1
                continue
            if since is not None and (listed.changed_at(obj) or since) < since:
                found.skipped += 1
                continue
            item = listed.listed(mapping, entity, obj, observed_at, self.source)
            deliveries = [Delivery(body, event, DeliveryStatus.PENDING, item.object_id, self.program)
                          for event, body in item.bodies()]
            try:  # notify=False: what a list brings in is history, not news
                plans = [plan(mapping, document, d.fingerprint, observed_at, salesforce=salesforce,
                              program=self.program, notify=False)
                         for (_, document), d in zip(item.documents, deliveries)]
            except (MalformedDelivery, FieldProblem) as exc:
                # Stored and applied anyway: the failure is then recorded on its row, for /ops.
                if item.object_id is not None:
                    found.seen.append(item.object_id)
                found.drifts.append(Drift(entity, item.object_id or "?", drift.DriftKind.UNREADABLE, reason=str(exc)))
                found.deliveries += deliveries
                continue
            candidates.append((obj, deliveries, plans))

        table = mapping.warehouse.table if mapping.warehouse is not None else None
        keys = sorted({str(p.change.key) for _, _, plans in candidates for p in plans if p.change is not None})
        with self.services.inbox.engine.connect() as conn:
            held = self.services.warehouse.states(conn, table, keys, program=self.program) if table is not None else {}
            chains = ledger.chains(conn, keys, program=self.program) if mapping.ledger is not None else {}
        tombstones = self.services.warehouse.tables[table].tombstone_columns if table is not None else ()
        for obj, deliveries, plans in candidates:
            key = str(plans[0].change.key) if plans[0].change is not None else deliveries[0].entity_id
            if key is not None:
                found.seen.append(key)
            moved = drift.compare(entity, obj, plans, held.get(key), chains.get(key, ()), tombstones)
            if moved is None:
                found.unchanged += 1
                continue
            found.drifts.append(moved)
            found.deliveries += [d if d.entity_id == key else replace(d, entity_id=key) for d in deliveries]
            found.plans.update((d.fingerprint, p) for d, p in zip(deliveries, plans))
        return found

    def apply(self, examined: Examined) -> Applied:
        """Store the deliveries ``examined`` found (all of the program's), claimed, and apply them now. Raises
        ``TransientError`` when the database is away (what was stored waits for the workers)."""
        done = Applied()
        if not examined.deliveries:
            return done
        services = self.services
        stored = services.inbox.store_many(examined.deliveries, claimed=True)
        now = services.clock()
        events = [StoredDelivery(stored[d.fingerprint].id, d.event_type, d.body, DeliveryStatus.PENDING, 1, now,
                                 d.fingerprint, d.entity_id, d.program)
                  for d in unique(examined.deliveries) if stored[d.fingerprint].created]
        # Bytes already stored (by someone else) are left to whoever holds them.
        if not events:
            return done
        result = services.processor.process_batch(events, examined.plans)
        # Batch work: its records gather for a while, to go to Salesforce in large jobs.
        outcomes.report(events, result, lambda: services.request_flush(gather=True), services.clock())
        done.processed = len(result.processed) + len(result.ignored)
        done.failed = len(result.failed)
        return done


def unique(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """``deliveries`` without repeats of the same bytes, in order."""
    return list({d.fingerprint: d for d in deliveries}.values())
