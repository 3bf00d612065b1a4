"""Driving deliveries through the real processor into a real database, and reading the result."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sync.mapping import load_mappings
from sync.pipeline.processor import Processor
from sync.store import db, ledger
from sync.store.inbox import Delivery, DeliveryStatus, Inbox, StoredDelivery, webhook_events
from sync.store.ledger import commission_entries
from sync.store.warehouse import Warehouse
from tests.conftest import MAPPINGS

VOLATILE = {"sync_updated_at", "sync_event_id"}


class Pipe:
    """Store deliveries in the inbox and process them, as the worker does, minus the queue."""

    def __init__(self, database_url: str):
        self.engine = db.engine_for(database_url)
        self.inbox = Inbox(self.engine)
        self.mappings = load_mappings(MAPPINGS)
        self.warehouse = Warehouse(self.mappings)
        self.processor = Processor(self.engine, self.inbox, self.mappings, self.warehouse)

    def store(self, document: dict | bytes) -> StoredDelivery:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        event_type = json.loads(body)["event"]
        stored = self.inbox.store_many([Delivery(body, event_type, DeliveryStatus.PENDING)])
        [outcome] = stored.values()
        return self.inbox.delivery(outcome.id)

    def deliver(self, *documents: dict | bytes) -> list[str]:
        return [self.processor.process(self.store(d)) for d in documents]

    def deliver_in_batches(self, documents: list[dict], sizes: list[int]) -> None:
        """Deliver ``documents`` in batches of ``sizes`` (repeated as needed) through the batch path
        the worker uses: stored together, then one ``process_batch`` per batch."""
        start, turn = 0, 0
        while start < len(documents):
            size = sizes[turn % len(sizes)] if sizes else 1
            chunk, start, turn = documents[start:start + size], start + size, turn + 1
            deliveries = [Delivery(json.dumps(d).encode(), d["event"], DeliveryStatus.PENDING) for d in chunk]
            stored = self.inbox.store_many(deliveries)
            ids = [stored[d.fingerprint].id for d in deliveries]
            result = self.processor.process_batch(self.inbox.claim(len(ids), ids=ids))
            assert not result.failed, result.failed

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return self.warehouse.read(conn, table, key)

    def rows(self, table: str) -> list[dict[str, Any]]:
        t = self.warehouse.tables[table].table
        with self.engine.connect() as conn:
            found = [dict(r._mapping) for r in conn.execute(sa.select(t))]
        return sorted(
            ({k: v for k, v in r.items() if k not in VOLATILE} for r in found),
            key=lambda r: tuple(str(r[c.name]) for c in t.primary_key.columns),
        )

    def ledger(self, with_times: bool = True) -> list[tuple]:
        t = commission_entries
        with self.engine.connect() as conn:
            entries = conn.execute(sa.select(t)).all()
        return sorted(
            (
                e.entry_type, e.transaction_key, e.reward_ref, e.partner_id, e.amount, e.currency,
                e.reward_status, *((e.occurred_at,) if with_times and e.entry_type == "commission" else ()),
            )
            for e in entries
        )

    def entries(self) -> list[dict[str, Any]]:
        """Every ledger entry, in the order recorded."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(commission_entries).order_by(commission_entries.c.id))]

    def totals(self) -> dict[tuple[str, str | None, bool], dict[str, Decimal]]:
        """The ``partner_commissions`` view: {(partner, currency, is money): {approved, pending,
        rejected, reversed, owed}}."""
        with self.engine.connect() as conn:
            rows = ledger.totals(conn)
        return {(t.partner_id, t.currency, t.is_currency): {n: getattr(t, n) for n in ledger.TOTALS} for t in rows}

    def owed(self) -> dict[str, Decimal]:
        """Money owed per partner, for tests whose partners each earn in one currency."""
        owed: dict[str, Decimal] = {}
        for (partner, _, money), sums in self.totals().items():
            if money:
                assert partner not in owed, f"{partner} earns in several currencies: read totals()"
                owed[partner] = sums["owed"]
        return owed

    def snapshot(self) -> dict[str, Any]:
        return {
            "tables": {name: self.rows(name) for name in sorted(self.warehouse.tables)},
            "ledger": self.ledger(),
            "owed": self.owed(),
            "totals": self.totals(),
        }

    def reset(self) -> None:
        with self.engine.begin() as conn:
            for table in (commission_entries, webhook_events, *(t.table for t in self.warehouse.tables.values())):
                conn.execute(table.delete())


def envelope(event: str, sent_at: str, /, **data: Any) -> dict[str, Any]:
    """A delivery of ``event`` sent at ``sent_at`` (the envelope's created_at) carrying ``data``."""
    return {
        "event": event,
        "url": "https://example.com/webhooks/partnero",
        "webhook_key": "whk_test",
        "created_at": sent_at,
        "data": data,
    }
