"""Applying a mapping to a delivery: a pure function from the delivery to the writes it implies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jmespath.exceptions

from sync.envelope import parse_timestamp
from sync.errors import PermanentError
from sync.mapping.spec import Field, Mapping
from sync.mapping.transforms import ExactFloat, ValueProblem

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: A delivery's rank: what a delete says about the record's fields counts only until a real
#: state (created, updated…) arrives, whatever the times say.
RANK_DELETE, RANK_STATE = 0, 1


class FieldProblem(PermanentError):
    """A delivery's value does not fit its mapping; names the file, the field and the kind of
    problem, never the value (messages are logged and stored)."""


@dataclass(frozen=True, order=True)
class Version:
    """Orders the deliveries of one record; the greatest wins, so any order converges."""

    rank: int
    at: datetime
    fingerprint: str


@dataclass(frozen=True)
class RecordChange:
    table: str
    key_column: str
    key: str
    deleting: bool
    values: dict[str, Any]  # the record's columns as this delivery tells them
    tombstone: dict[str, Any]  # what a delete sets, kept once set (empty for other events)
    version: Version


@dataclass(frozen=True)
class Reward:
    #: Identifies the reward within its transaction: its own key (when it has one no other reward
    #: shares and that is not the transaction's), else its partner, then "#" and its place among
    #: the rewards of that key or partner: ``ptn_8c1e6f0a#1``.
    ref: str
    partner_id: str
    amount: Decimal
    currency: str | None
    status: str | None
    occurred_at: datetime | None
    #: False for points and credits: kept apart from money.
    is_currency: bool = True


@dataclass(frozen=True)
class Plan:
    """Everything one delivery means for the warehouse and the ledger."""

    mapping: Mapping
    event: str
    change: RecordChange | None
    #: The rewards this state of the record tells (the ledger follows the newest state's); None
    #: when it tells none: a delete, or a mapping without a ledger.
    rewards: tuple[Reward, ...] | None
    reverses: bool  # a refund: whatever stands for this record is reversed
    crm: RecordChange | None = None  # what the Salesforce record should say


def parse_document(body: bytes) -> Any:
    """The delivery's JSON, keeping every number's digits exact."""
    return json.loads(body, parse_float=ExactFloat)


#: The longest record id the inbox keeps to name a delivery's record (its column is VARCHAR(255)).
MAX_ENTITY_ID = 255


def entity_label(key: Any) -> str | None:
    """A record id as the inbox's ``entity_id`` keeps it: printable text of at most 255
    characters (a number becomes its digits), else None."""
    if isinstance(key, bool) or not isinstance(key, str | int | ExactFloat):
        return None
    text = key.text if isinstance(key, ExactFloat) else str(key)
    if not text or len(text) > MAX_ENTITY_ID or not text.isprintable():
        return None
    return text


def identify(mapping: Mapping, document: Any) -> str | None:
    """The id of the record ``document`` is about, by ``mapping``'s identity; None when it
    cannot be read (the worker then fails the delivery with the reason). Never raises."""
    try:
        return entity_label(mapping.identity.evaluate(document))
    except Exception:  # noqa: BLE001 - a label, not a verdict: the worker judges the delivery
        return None


def plan(mapping: Mapping, document: dict[str, Any], fingerprint: str, received_at: datetime | None = None) -> Plan:
    event = document["event"]
    deleting = event in mapping.deletes
    key = _value(mapping, mapping.identity, document, "identity")
    if key is None or key == "":
        raise FieldProblem(f"{mapping.path.name}: identity: {mapping.identity.source} is empty in this delivery")
    at = version_time(mapping, document, received_at)
    version = Version(RANK_DELETE if deleting else RANK_STATE, at, fingerprint)

    change = None
    if mapping.warehouse is not None:
        target = mapping.warehouse
        values = {f.name: _value(mapping, f, document, f"warehouse.columns.{f.name}") for f in target.columns}
        tombstone = (
            {f.name: _value(mapping, f, document, f"warehouse.on_delete.{f.name}") for f in target.on_delete}
            if deleting
            else {}
        )
        change = RecordChange(target.table, target.key, str(key), deleting, values, tombstone, version)

    rewards = None
    if mapping.ledger is not None and not deleting:
        rewards = _rewards(mapping, document, str(key))
    reverses = mapping.ledger is not None and deleting

    crm = None
    if mapping.salesforce is not None:
        target = mapping.salesforce
        values = {f.name: _value(mapping, f, document, f"salesforce.fields.{f.name}") for f in target.fields}
        for reference in target.references:
            parent = _value(mapping, reference.value, document, f"salesforce.references.{reference.name}")
            values[reference.name] = None if parent in (None, "") else {reference.external_id: parent}
        tombstone = (
            {f.name: _value(mapping, f, document, f"salesforce.on_delete.{f.name}") for f in target.on_delete}
            if deleting
            else {}
        )
        crm = RecordChange(target.object, target.external_id, str(key), deleting, values, tombstone, version)
    return Plan(mapping, event, change, rewards, reverses, crm)


#: A time further than this ahead of the delivery's own time (or of its arrival) is not believed.
MAX_AHEAD = timedelta(days=1)
EARLIEST = datetime(1971, 1, 1, tzinfo=timezone.utc)


def version_time(mapping: Mapping, document: Any, received_at: datetime | None = None) -> datetime:
    """When the state this delivery tells was current: the mapping's ``version``.

    A version that cannot be read, or is absurd (before 1971, or more than a day ahead of the
    delivery's own ``created_at``), falls back to the delivery's time, and an absurd delivery time
    to the time it arrived: one bad timestamp must neither fail a delivery nor pin a record
    against later updates.
    """
    arrived = received_at or datetime.now(timezone.utc)
    sent = parse_timestamp(document.get("created_at")) or parse_timestamp(document.get("timestamp"))
    if not _believable(sent, arrived):
        sent = received_at
    try:
        at = mapping.version.evaluate(document)
    except Exception:  # noqa: BLE001 - an unreadable time is not worth a failed delivery
        at = None
    if not _believable(at, sent or arrived):
        at = sent
    return at or EPOCH


def _believable(at: Any, reference: datetime) -> bool:
    return isinstance(at, datetime) and EARLIEST <= at and at - reference <= MAX_AHEAD


def _rewards(mapping: Mapping, document: Any, transaction_key: str) -> tuple[Reward, ...]:
    """The rewards the delivery lists (none listed: none). Each reward's fields are read from the
    reward, which also sees its transaction (the delivery's ``data``) as ``transaction``."""
    ledger = mapping.ledger
    found = ledger.rewards.search(document)
    if found is None:
        return ()
    if not isinstance(found, list):
        raise FieldProblem(f"{mapping.path.name}: ledger.rewards: {ledger.rewards_source} is not a list")
    read = []
    for position, item in enumerate(found):
        scope = {**item, "transaction": document.get("data")} if isinstance(item, dict) else item
        values = {name: _value(mapping, f, scope, f"ledger.{name}") for name, f in ledger.fields.items()}
        if not values["partner"]:
            raise FieldProblem(f"{mapping.path.name}: ledger.partner: reward {position + 1} has no partner")
        if values["amount"] is None:
            raise FieldProblem(f"{mapping.path.name}: ledger.amount: reward {position + 1} has no amount")
        read.append(values)
    # Partnero's rewards carry their transaction's key: only a key of the reward's own, which no
    # other reward shares, tells it apart. Otherwise its partner and place do (stable while
    # Partnero keeps the rewards' order).
    keys = [values.get("key") for values in read]
    rewards = []
    seen: dict[str, int] = {}
    for values, own in zip(read, keys):
        partner = str(values["partner"])
        base = own if own and own != transaction_key and keys.count(own) == 1 else partner
        seen[base] = seen.get(base, 0) + 1
        rewards.append(
            Reward(
                ref=f"{base}#{seen[base]}",
                partner_id=partner,
                amount=values["amount"],
                currency=values["currency"],
                status=values["status"],
                occurred_at=values["occurred_at"],
                is_currency=values.get("is_currency") is not False,
            )
        )
    return tuple(rewards)


def _value(mapping: Mapping, field: Field, document: Any, where: str) -> Any:
    try:
        return field.evaluate(document)
    except ValueProblem as exc:
        raise FieldProblem(f"{mapping.path.name}: {where}: {exc}") from exc
    except jmespath.exceptions.JMESPathTypeError as exc:
        # Its own message quotes the value: name the function and the types instead.
        expected = " or ".join(exc.expected_types)
        raise FieldProblem(
            f"{mapping.path.name}: {where}: {exc.function_name}() was given {exc.actual_type}, expects {expected}"
        ) from exc
    except Exception as exc:  # anything else an expression or transform raises: never quote it
        raise FieldProblem(f"{mapping.path.name}: {where}: could not be computed ({type(exc).__name__})") from exc
