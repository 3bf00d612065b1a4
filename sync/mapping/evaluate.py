"""Applying a mapping to a delivery: a pure function from the delivery to the writes it implies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jmespath.exceptions

from sync.envelope import ExactFloat, parse_timestamp
from sync.errors import PermanentError
from sync.mapping.spec import Field, Mapping
from sync.mapping.transforms import ValueProblem, kind

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
    #: Why the Salesforce record cannot be computed from this delivery (then ``crm`` holds only
    #: the fields that could be): the record is refused, the warehouse and ledger are not.
    crm_problem: str | None = None


#: The longest record id: the key columns (warehouse, inbox, ledger, outbox) are VARCHAR(255).
MAX_ENTITY_ID = 255
#: What a record id may not contain: control characters, and halves of UTF-16 pairs (no
#: database can store those).
_UNSTORABLE_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def entity_label(key: Any) -> str | None:
    """A record id as the inbox's ``entity_id`` keeps it: printable text of at most 255
    characters (a number becomes its digits), else None."""
    if isinstance(key, bool) or not isinstance(key, str | int | ExactFloat):
        return None
    text = key.text if isinstance(key, ExactFloat) else str(key)
    if not text or len(text) > MAX_ENTITY_ID or not text.isprintable():
        return None
    return text


def record_key(mapping: Mapping, document: Any) -> str:
    """The id of the record ``document`` is about, by ``mapping``'s identity, as text.

    A record id is a text that is not blank, or a whole number; anything else (a list, an
    object, true/false, a number with a fraction, a text longer than 255 characters or holding
    control characters) raises ``FieldProblem`` saying which, never quoting it.
    """
    key = _value(mapping, mapping.identity, document, "identity", raw=True)
    where = f"{mapping.path.name}: identity: {mapping.identity.source}"
    if key is None or (isinstance(key, str) and not key.strip()):
        raise FieldProblem(f"{where} is empty in this delivery")
    if isinstance(key, float):
        raise FieldProblem(f"{where} is a number with a decimal point: a record id is a text or a whole number")
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise FieldProblem(f"{where} is {kind(key)}: a record id is a text or a whole number")
    text = key if isinstance(key, str) else str(key)
    if len(text) > MAX_ENTITY_ID:
        raise FieldProblem(f"{where} is longer than {MAX_ENTITY_ID} characters: too long for a record id")
    if _UNSTORABLE_ID.search(text):
        raise FieldProblem(f"{where} holds control characters or broken Unicode: not a record id")
    return text


def identify(mapping: Mapping, document: Any) -> str | None:
    """The id of the record ``document`` is about (``record_key``), as the inbox names it; None
    when it is not a usable id (the worker then fails the delivery with the reason). Never raises."""
    try:
        return entity_label(record_key(mapping, document))
    except Exception:  # noqa: BLE001 - a label, not a verdict: the worker judges the delivery
        return None


def plan(mapping: Mapping, document: dict[str, Any], fingerprint: str, received_at: datetime | None = None,
         *, salesforce: bool = True) -> Plan:
    """What ``document`` means for the warehouse, the ledger and (with ``salesforce``) the CRM.

    Raises ``FieldProblem`` when the delivery cannot be applied: its record id, or a warehouse
    or ledger value, does not fit the mapping. A Salesforce field that cannot be computed does
    not fail it: the CRM record is refused (``Plan.crm_problem``), the rest goes ahead. Without
    ``salesforce`` (CRM sync off), the ``salesforce:`` section is not evaluated at all.
    """
    event = document["event"]
    deleting = event in mapping.deletes
    key = record_key(mapping, document)
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
        change = RecordChange(target.table, target.key, key, deleting, values, tombstone, version)

    rewards = None
    if mapping.ledger is not None and not deleting:
        rewards = _rewards(mapping, document, str(key))
    reverses = mapping.ledger is not None and deleting

    crm, crm_problem = None, None
    if salesforce and mapping.salesforce is not None:
        target = mapping.salesforce
        problems: list[str] = []
        values = _fields(mapping, target.fields, document, "salesforce.fields", problems)
        for reference in target.references:
            parents = _fields(mapping, (reference.value,), document, "salesforce.references", problems)
            if reference.name in parents:
                parent = parents[reference.name]
                values[reference.name] = None if parent in (None, "") else {reference.external_id: parent}
        tombstone = _fields(mapping, target.on_delete, document, "salesforce.on_delete", problems) if deleting else {}
        crm = RecordChange(target.object, target.external_id, key, deleting, values, tombstone, version)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            crm_problem = f"{problems[0]}{more}"
    return Plan(mapping, event, change, rewards, reverses, crm, crm_problem)


def _fields(mapping: Mapping, fields: Iterable[Field], document: Any, where: str,
            problems: list[str]) -> dict[str, Any]:
    """The fields that can be computed from ``document``; why the others cannot goes to ``problems``."""
    values = {}
    for f in fields:
        try:
            values[f.name] = _value(mapping, f, document, f"{where}.{f.name}")
        except FieldProblem as exc:
            problems.append(str(exc))
    return values


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


def _value(mapping: Mapping, field: Field, document: Any, where: str, raw: bool = False) -> Any:
    """``field``'s value in ``document`` (``raw``: before it is made the field's type); raises
    ``FieldProblem`` naming the file, the field and the kind of problem, never the value."""
    try:
        return field.raw(document) if raw else field.evaluate(document)
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
