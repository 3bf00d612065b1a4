"""Applying a mapping to a delivery: a pure function from the delivery to the writes it implies."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import jmespath.exceptions

from sync.core.envelope import ExactFloat, parse_timestamp
from sync.core.errors import PermanentError
from sync.mapping.bounds import search
from sync.mapping.message import ESCAPES
from sync.mapping.spec import DEFAULT_PROGRAM, Field, Mapping, Notification
from sync.mapping.transforms import COERCE, MAX_ENTITY_ID, ValueProblem, id_problem, kind

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
class Notice:
    """A message a delivery sends (a ``notify`` entry whose condition holds): the entry's name, the
    variable that holds the URL, the body's format and the text; or why the text cannot be made
    (``problem``: the notification fails with it, the delivery does not)."""

    name: str
    url_variable: str
    format: str
    text: str
    problem: str | None = None


@dataclass(frozen=True)
class Plan:
    """Everything one delivery means for the warehouse, the ledger and the Salesforce outbox."""

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
    #: The record's identity (its id by the mapping's ``identity``), as text. ``crm.key`` is what
    #: the Salesforce record's external id holds: this identity through ``salesforce.key``.
    key: str = field(default="", kw_only=True)
    #: The messages the delivery sends, by the mapping's ``notify`` entries whose condition holds.
    notices: tuple[Notice, ...] = field(default=(), kw_only=True)


def entity_label(key: Any) -> str | None:
    """A record id as the inbox's ``entity_id`` keeps it: printable text of at most 255
    characters (a number becomes its digits), else None."""
    if isinstance(key, bool) or not isinstance(key, str | int | ExactFloat):
        return None
    text = key.text if isinstance(key, ExactFloat) else str(key)
    if not text or len(text) > MAX_ENTITY_ID or not text.isprintable():
        return None
    return text


def record_key(mapping: Mapping, document: Any, program: str = DEFAULT_PROGRAM) -> str:
    """The id of the record ``document`` is about, by ``mapping``'s identity, as text; the
    identity sees ``program`` as a top-level name (see ``_with_program``).

    A record id is a text that is not blank, or a whole number; anything else (a list, an
    object, true/false, a number with a fraction, a text longer than 255 characters or holding
    control characters) raises ``FieldProblem`` saying which, never quoting it.
    """
    return _record_key(mapping, _with_program(document, program))


def _record_key(mapping: Mapping, document: Any) -> str:
    """``record_key`` of a document that already holds its ``program``."""
    key = _value(mapping, mapping.identity, document, "identity", raw=True)
    where = f"{mapping.path.name}: identity: {mapping.identity.source}"
    if key is None or (isinstance(key, str) and not key.strip()):
        raise FieldProblem(f"{where} is empty in this delivery")
    return id_text(key, where, "a record id")


def id_text(value: Any, where: str, what: str) -> str:
    """``value`` (not None) as the text of an id (``what``: "a record id", "a partner id"…):
    a text that is not blank, of at most 255 characters, without control characters, or a whole
    number (as its digits). Anything else raises ``FieldProblem`` (``where`` and the kind of
    problem, never the value; the rule is ``transforms.id_problem``)."""
    problem = id_problem(value, what)
    if problem is not None:
        raise FieldProblem(f"{where} {problem}")
    return value if isinstance(value, str) else str(value)


def identify(mapping: Mapping, document: Any, program: str = DEFAULT_PROGRAM) -> str | None:
    """The id of the record ``document`` is about (``record_key``), as the inbox names it; None
    when it is not a usable id (the worker then fails the delivery with the reason). Never raises."""
    try:
        return entity_label(record_key(mapping, document, program))
    except Exception:  # noqa: BLE001 - a label, not a verdict: the worker judges the delivery
        return None


def _with_program(document: Any, program: str) -> Any:
    """``document`` with ``program`` set as a top-level name, as every expression reads it: ours
    wins over a ``program`` the delivery itself carries. A document that is not an object is
    given back as it is."""
    return {**document, "program": program} if isinstance(document, dict) else document


def plan(mapping: Mapping, document: dict[str, Any], fingerprint: str, received_at: datetime | None = None,
         *, salesforce: bool = True, program: str = DEFAULT_PROGRAM, notify: bool = True) -> Plan:
    """What ``document`` means for the warehouse, the ledger and (with ``salesforce``) the CRM,
    and (with ``notify``) the messages it sends, when it is a delivery of ``program``: every
    expression sees ``program`` as a top-level name.

    Raises ``FieldProblem`` when the delivery cannot be applied: its record id, or a warehouse
    or ledger value, does not fit the mapping. A Salesforce field that cannot be computed does
    not fail it: the CRM record is refused (``Plan.crm_problem``), the rest goes ahead. Without
    ``salesforce`` (CRM sync off), the ``salesforce:`` section is not evaluated at all. A
    notification that cannot be made does not fail it either (``Notice.problem``).
    """
    document = _with_program(document, program)
    event = document["event"]
    deleting = event in mapping.deletes
    key = _record_key(mapping, document)
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
        crm, crm_problem = _crm(mapping, document, key, deleting, version)
    notices = notices_of(mapping, document) if notify else ()
    return Plan(mapping, event, change, rewards, reverses, crm, crm_problem, key=key, notices=notices)


def notices_of(mapping: Mapping, document: dict[str, Any]) -> tuple[Notice, ...]:
    """The messages ``document`` (holding its ``program``) sends: each ``notify`` entry of its
    event whose condition holds, its fields evaluated within the bounds of every expression."""
    found = (_notice(mapping, entry, document) for entry in mapping.notify if document["event"] in entry.events)
    return tuple(notice for notice in found if notice is not None)


def _notice(mapping: Mapping, entry: Notification, document: dict[str, Any]) -> Notice | None:
    """``entry``'s message for ``document``; None when its condition is false. What cannot be
    computed is the notification's problem, named by file and field, never quoting a value."""
    where = f"notify.{entry.name}"
    failed = partial(Notice, entry.name, entry.url_variable, entry.format, "")
    if entry.when is not None:
        try:
            holds = truthy(_guarded(mapping, f"{where}.when", partial(search, entry.when), document))
        except FieldProblem as exc:
            return failed(str(exc))
        if not holds:
            return None
    problems: list[str] = []
    values = _fields(mapping, entry.fields, document, f"{where}.fields", problems)
    if problems:
        return failed(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    try:
        text = entry.message.render(values, ESCAPES.get(entry.format, str))
    except ValueError as exc:
        return failed(f"{mapping.path.name}: {where}.message: {exc}")
    return Notice(entry.name, entry.url_variable, entry.format, text)


def truthy(value: Any) -> bool:
    """JMESPath's truth: false for null, false, an empty text, list or object; true for the rest
    (0 included)."""
    return not (value is None or value is False or (isinstance(value, str | list | dict) and not value))


def _crm(mapping: Mapping, document: dict[str, Any], key: str, deleting: bool,
         version: Version) -> tuple[RecordChange, str | None]:
    """What the Salesforce record of ``key`` should say, and why it cannot be computed (None: it
    can). Its external id holds ``key`` through the section's ``key``; a reference's value goes
    through its parent's. When the external id itself cannot be computed, the record is refused
    under its identity."""
    target = mapping.salesforce
    program = document["program"]
    problems: list[str] = []
    values = _fields(mapping, target.fields, document, "salesforce.fields", problems)
    for reference in target.references:
        parents = _fields(mapping, (reference.value,), document, "salesforce.references", problems)
        if reference.name not in parents:
            continue
        parent = parents[reference.name]
        if parent in (None, ""):
            values[reference.name] = None
            continue
        try:
            parent = _keyed(mapping, f"salesforce.references.{reference.name}", reference.key, parent, program)
        except FieldProblem as exc:
            problems.append(str(exc))
            continue
        values[reference.name] = {reference.external_id: parent}
    tombstone = _fields(mapping, target.on_delete, document, "salesforce.on_delete", problems) if deleting else {}
    try:
        external = salesforce_key(mapping, key, program)
    except FieldProblem as exc:
        problems.insert(0, str(exc))
        external = key
    crm = RecordChange(target.object, target.external_id, external, deleting, values, tombstone, version)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return crm, f"{problems[0]}{more}" if problems else None


def salesforce_key(mapping: Mapping, identity: str, program: str = DEFAULT_PROGRAM) -> str:
    """What the external id of the Salesforce record of ``identity`` (a record of ``program``)
    holds: the identity through ``mapping``'s ``salesforce.key``, else the identity itself.
    Raises ``FieldProblem`` when the key gives no usable id."""
    return _keyed(mapping, "salesforce.key", mapping.salesforce.key, identity, program)


#: External ids computed lately, by (key, program, identity): a key reads only those two, and a
#: partner's is asked for by every sale that refers to it. Emptied when full; a key that gives no
#: usable id is never kept (its error is raised each time).
_KEYS: dict[tuple[Field, str, str], str] = {}
_KEYS_KEPT = 10_000


def _keyed(mapping: Mapping, where: str, key: Field | None, identity: Any, program: str) -> Any:
    """``identity`` through the expression ``key`` (None: as it is), which reads ``program`` and
    ``id`` (the identity as text); its result must be an id (``id_text``), else ``FieldProblem``."""
    if key is None:
        return identity
    text = identity if isinstance(identity, str) else str(identity)
    known = _KEYS.get((key, program, text))
    if known is not None:
        return known
    value = _value(mapping, key, {"program": program, "id": text}, where, raw=True)
    said = f"{mapping.path.name}: {where}: {key.source}"
    if value is None:
        raise FieldProblem(f"{said} gives nothing: an external id is a text or a whole number")
    found = id_text(value, said, "an external id")
    if len(_KEYS) >= _KEYS_KEPT:
        _KEYS.clear()
    _KEYS[(key, program, text)] = found
    return found


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
    to the time it arrived (``received_at``): one bad timestamp must neither fail a delivery nor
    pin a record against later updates. Without ``received_at`` (not known), a delivery time is
    only checked against 1971. The caller tells the time: this reads no clock.
    """
    sent = parse_timestamp(document.get("created_at")) or parse_timestamp(document.get("timestamp"))
    if not _believable(sent, received_at):
        sent = received_at
    try:
        at = mapping.version.evaluate(document)
    except Exception:  # noqa: BLE001 - an unreadable time is not worth a failed delivery
        at = None
    if not _believable(at, sent or received_at):
        at = sent
    return at or EPOCH


def _believable(at: Any, reference: datetime | None) -> bool:
    """Whether ``at`` is a time after 1971, and not more than a day ahead of ``reference`` (if known)."""
    return isinstance(at, datetime) and EARLIEST <= at and (reference is None or at - reference <= MAX_AHEAD)


#: A currency is an ISO 4217 code: three capital letters (after the mapping's transforms).
CURRENCY_CODE = re.compile("[A-Z]{3}")
#: The unit of points or credits (``is_currency`` false) is kept in the ledger's currency
#: column, VARCHAR(16).
MAX_UNIT = 16


def _rewards(mapping: Mapping, document: Any, transaction_key: str) -> tuple[Reward, ...]:
    """The rewards the delivery lists (none listed: none). Each reward's fields are read from the
    reward, which also sees its transaction (the delivery's ``data``) as ``transaction``, and the
    delivery's ``program``.

    A reward's values are held to what they are (``FieldProblem`` otherwise, naming the field,
    the reward and the kind of problem): its partner is an id as a record id is (``id_text``),
    as is its key when it has one; its amount a number; ``is_currency`` true, false or nothing
    (money); its currency a text, for money a code of three capital letters (USD), for points a
    unit of at most 16 printable characters; its status a text without control characters.
    """
    ledger = mapping.ledger
    found = _guarded(mapping, "ledger.rewards", partial(search, ledger.rewards), document)
    if found is None:
        return ()
    if not isinstance(found, list):
        raise FieldProblem(f"{mapping.path.name}: ledger.rewards: {ledger.rewards_source} is not a list")
    read = [_reward(mapping, item, document, position + 1) for position, item in enumerate(found)]
    # Partnero's rewards carry their transaction's key: only a key of the reward's own, which no
    # other reward shares, tells it apart. Otherwise its partner and place do (stable while
    # Partnero keeps the rewards' order).
    keys = [values.get("key") for values in read]
    rewards = []
    seen: dict[str, int] = {}
    for values, own in zip(read, keys):
        partner = values["partner"]
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
                is_currency=values["is_currency"] is not False,
            )
        )
    return tuple(rewards)


def _reward(mapping: Mapping, item: Any, document: Any, number: int) -> dict[str, Any]:
    """One reward's values, each held to what it is (see ``_rewards``). The reward's expressions
    see its transaction as ``transaction`` and the delivery's ``program``, as top-level names."""
    scope = ({**item, "transaction": document.get("data"), "program": document.get("program")}
             if isinstance(item, dict) else item)
    fields = mapping.ledger.fields
    values = {}
    for name, f in fields.items():
        if name == "currency":  # looked up once: what it finds is checked below, then transformed
            found = _guarded(mapping, "ledger.currency", f.found, scope)
            values[name] = _guarded(mapping, "ledger.currency", f.transformed, found)
        else:
            values[name] = _value(mapping, f, scope, f"ledger.{name}", raw=True)

    def where(name: str, what: str | None = None) -> str:
        return f"{mapping.path.name}: ledger.{name}: reward {number}'s {what or name}"

    def problem(name: str, message: str) -> FieldProblem:
        return FieldProblem(f"{where(name)} {message}")

    if values["partner"] is None:
        raise FieldProblem(f"{mapping.path.name}: ledger.partner: reward {number} has no partner")
    values["partner"] = id_text(values["partner"], where("partner"), "a partner id")
    if values.get("key") is not None:
        values["key"] = id_text(values["key"], where("key"), "a reward key")
    money = values.get("is_currency")
    if money is not None and not isinstance(money, bool):
        raise problem("is_currency", f"is {kind(money)}: it is true or false (a JSON boolean), or nothing for money")
    values["is_currency"] = money
    if found is not None and not isinstance(found, str):
        raise problem("currency", f"is {kind(found)}: a currency is a text such as USD")
    if values["status"] is not None and not isinstance(values["status"], str):
        raise problem("status", f"is {kind(values['status'])}: a status is a text such as ok")
    for name in ("amount", "currency", "status", "occurred_at"):
        values[name] = _guarded(mapping, f"ledger.{name}", COERCE[fields[name].type], values[name])
    currency = values["currency"]
    if money is not False and currency is not None and not CURRENCY_CODE.fullmatch(currency):
        raise problem("currency", "is not a currency code: three capital letters, such as USD")
    if money is False and currency is not None and not (
            currency.strip() == currency and 0 < len(currency) <= MAX_UNIT and currency.isprintable()):
        raise problem("currency", f"is not a unit for points: at most {MAX_UNIT} printable characters, not blank")
    if values["status"] is not None and not values["status"].isprintable():
        raise problem("status", "holds control characters: not a status")
    if values["amount"] is None:
        raise FieldProblem(f"{mapping.path.name}: ledger.amount: reward {number} has no amount")
    return values


def _value(mapping: Mapping, field: Field, document: Any, where: str, raw: bool = False) -> Any:
    """``field``'s value in ``document`` (``raw``: before it is made the field's type); raises
    ``FieldProblem`` naming the file, the field and the kind of problem, never the value."""
    return _guarded(mapping, where, field.raw if raw else field.evaluate, document)


def _guarded(mapping: Mapping, where: str, compute: Callable[[Any], Any], argument: Any) -> Any:
    """``compute(argument)``; what it raises becomes a ``FieldProblem`` naming the file,
    ``where`` and the kind of problem, never the value."""
    try:
        return compute(argument)
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
