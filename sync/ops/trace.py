"""What one delivery became, read for ``/ops``: its inbox row and body, the warehouse row of its
record, the ledger of its transaction, its Salesforce record and the notifications it sent, all of
the delivery's program (a record's identity is its program and its id)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sync.core import envelope
from sync.core.envelope import MalformedDelivery
from sync.mapping import FieldProblem, Mapping, identify, salesforce_key
from sync.store import ledger, notifications
from sync.store.inbox import InboxRow, StoredDelivery
from sync.store.outbox import Outbox


@dataclass(frozen=True)
class Trace:
    row: InboxRow
    event: StoredDelivery
    #: The body indented for reading; None when it was pruned.
    payload: str | None
    #: Whether this deployment still serves the delivery's program (else no mapping applies it).
    served: bool
    #: The mapping that handles the event type; None: the delivery is stored for the record only.
    mapping: Mapping | None
    #: The record it is about (of the delivery's program): the warehouse key, the ledger's transaction key.
    record_key: str | None
    #: The mapped table's row for the record (None: no row, or the mapping has no table).
    warehouse: dict[str, Any] | None
    #: Every ledger entry of the transaction; None when the mapping keeps no ledger.
    ledger: list[dict[str, Any]] | None
    crm_enabled: bool
    #: The record's outbox row (None: CRM sync is off, no Salesforce target, or nothing yet).
    crm: dict[str, Any] | None
    #: The value of the record's Salesforce external id (the mapping's ``salesforce.key`` of the
    #: program and id; None: no Salesforce target, or the key gives none).
    crm_key: str | None = None
    #: The messages its mapping's ``notify`` entries sent (or are sending), in the mapping's order:
    #: name, status, attempts, sent at, last error, text.
    notifications: tuple[dict[str, Any], ...] = ()

    @property
    def winner(self) -> int | None:
        """The inbox row whose state the warehouse row holds."""
        return self.warehouse.get("sync_event_id") if self.warehouse else None

    @property
    def tombstone_from_here(self) -> bool:
        """Whether this delivery's delete is the one the record's tombstone keeps."""
        return bool(self.warehouse) and self.warehouse.get("sync_deleted_fingerprint") == self.event.fingerprint

    @property
    def own_entries(self) -> list[dict[str, Any]]:
        """The ledger entries this delivery booked."""
        return [e for e in self.ledger or [] if e["event_id"] == self.event.id]


def trace(services, event_id: int) -> Trace | None:
    """The trace of inbox row ``event_id``; None when there is no such row."""
    inbox = services.inbox
    found = inbox.entry(event_id)
    if found is None:
        return None
    row, event = found
    program = row.program
    mappings = services.mappings_for(program)  # None: a program this deployment no longer serves
    mapping = mappings.for_event(row.event_type) if mappings is not None else None
    key = row.entity_id
    if key is None and mapping is not None and not event.pruned:
        key = _identify(mapping, event.body)
    crm_enabled = services.settings.salesforce.enabled
    crm_key = _crm_key(mapping, key, program)
    warehouse_row = crm = None
    entries = [] if mapping is not None and mapping.ledger is not None else None
    with inbox.engine.connect() as conn:
        if mapping is not None and key is not None:
            if mapping.warehouse is not None:
                warehouse_row = services.warehouse.read(conn, mapping.warehouse.table, key, program=program)
            if entries is not None:
                entries = ledger.entries(conn, key, program=program)
            if crm_enabled and crm_key is not None:
                crm = Outbox().read(conn, mapping.salesforce.object, crm_key, program=program)
        sent = tuple(notifications.of_delivery(conn, row.id))
    return Trace(
        row=row,
        event=event,
        payload=None if event.pruned else readable_json(event.body),
        served=mappings is not None,
        mapping=mapping,
        record_key=printable(key) if key is not None else None,
        warehouse=warehouse_row,
        ledger=entries,
        crm_enabled=crm_enabled,
        crm=crm,
        crm_key=printable(crm_key) if crm_key is not None else None,
        notifications=sent,
    )


def _crm_key(mapping: Mapping | None, key: str | None, program: str) -> str | None:
    """The external id of ``program``'s record ``key`` in Salesforce, by ``mapping``'s
    ``salesforce.key``; None without a Salesforce target, or when the key gives no id."""
    if mapping is None or mapping.salesforce is None or key is None:
        return None
    try:
        return salesforce_key(mapping, key, program)
    except FieldProblem:
        return None


def _identify(mapping: Mapping, body: bytes) -> str | None:
    try:
        document = envelope.parse(body)
    except MalformedDelivery:
        return None
    return identify(mapping, document)


def printable(text: str) -> str:
    """``text`` with what no encoding can write (a lone surrogate: JSON's "\\ud800" may carry one)
    as its escape, so a page can show it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def readable_json(body: bytes) -> str:
    """``body`` indented for reading, each number with the digits it was sent with (a float
    would turn 12.50 into 12.5), a lone surrogate as its escape; the text as it is when it is
    not JSON."""
    numbers: list[str] = []
    # A marker no string in the body can contain: a random part, behind a NUL.
    marker = f"\0{secrets.token_hex(8)}:"

    def keep(text: str) -> str:
        numbers.append(text)
        return f"{marker}{len(numbers) - 1}"

    try:
        document = json.loads(body, parse_float=keep, parse_int=keep)
    except ValueError:
        return body.decode("utf-8", errors="replace")
    text = json.dumps(document, indent=2, ensure_ascii=False)
    quoted = re.escape(json.dumps(marker)[1:-1])
    return printable(re.sub(f'"{quoted}(\\d+)"', lambda m: numbers[int(m.group(1))], text))
