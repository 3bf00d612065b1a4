"""Mapping files, checked once into typed objects; every problem is reported with file and line."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
from jmespath.parser import ParsedResult

from sync.core.errors import ConfigurationError
from sync.mapping import bounds, message
from sync.mapping.loader import LineDict, YamlProblem, load_yaml
from sync.mapping.transforms import (
    ANY,
    BUILDERS,
    COERCE,
    TYPES,
    Transform,
    ValueProblem,
    compatible,
    id_problem,
    literal_type,
)

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
EVENT = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
#: Table name prefixes the databases keep for themselves.
SYSTEM_TABLE_PREFIXES = ("sqlite_", "pg_")
#: Prefix of the bookkeeping columns partnero-sync adds to every warehouse table.
SYSTEM_PREFIX = "sync_"
#: The column partnero-sync fills with the program's name on every warehouse table.
PROGRAM_COLUMN = "program"
#: The program of a deployment that names none (PARTNERO_PROGRAMS unset), of every row stored
#: before programs existed, and the one a caller that names none means. Settings and the store
#: take it from here: the mapping engine is below them.
DEFAULT_PROGRAM = "default"
#: What a ``salesforce.key`` is tried on when the files are checked: the default program and one
#: with a dash, each with two ids (two records of one program must not share an external id).
KEY_SAMPLES = ((DEFAULT_PROGRAM, "x"), (DEFAULT_PROGRAM, "y"), ("a-b", "x"), ("a-b", "y"))
DEFAULT_VERSION = "data.updated_at || created_at || timestamp"
#: Partnero's REST lists a mapping may load from (backfill, reconcile), parents first (a customer
#: names its partner, a transaction both).
PARTNERO_LISTS = ("partners", "customers", "transactions")
#: The list whose objects a kind of event is about (``partner.updated``: ``partners``): a mapping's
#: list when it does not name one.
LIST_OF_EVENTS = {"partner": "partners", "customer": "customers", "transaction": "transactions"}
#: Limits that keep what a mapping file asks for bounded (the shipped files stay far below them).
MAX_EXPRESSION_LENGTH = 500
#: How deeply brackets and parentheses may nest in an expression, and its parsed form may nest.
MAX_EXPRESSION_NESTING = 16
MAX_EXPRESSION_DEPTH = 32
#: Columns of one warehouse table, or fields of one Salesforce object.
MAX_COLUMNS = 200
LEDGER_FIELDS = ("partner", "amount", "currency", "status", "occurred_at")
#: Reward fields a ledger section may name: the reward's own key (its identity, when it has one)
#: and whether it is money (false: points or credits, kept apart).
LEDGER_OPTIONAL = ("key", "is_currency")
LEDGER_TYPES = {"partner": "string", "amount": "decimal", "currency": "string", "status": "string",
                "occurred_at": "datetime", "key": "string", "is_currency": "boolean"}
#: The bodies a message may be posted as (a ``notify`` entry's ``format``): their one home, below
#: ``sync.notify.webhook`` and the settings, which take them from here. ``slack`` is ``{"text": ...}``.
MESSAGE_FORMATS = ("slack", "teams", "json")
DEFAULT_MESSAGE_FORMAT = "slack"
#: A ``notify`` entry's ``url`` names an environment variable ending in this (``SALES_WEBHOOK_URL``),
#: never the URL itself: a webhook's URL is a secret, and the settings read every such variable.
WEBHOOK_URL_SUFFIX = "_WEBHOOK_URL"
URL_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]{0,80}" + WEBHOOK_URL_SUFFIX + "$")
NOTIFY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
NOTIFY_KEYS = {"name", "on", "when", "url", "format", "fields", "message"}
#: ``notify`` entries of one file.
MAX_NOTIFICATIONS = 20
#: The commission totals a Salesforce section may name a field for, by their mapping key.
COMMISSION_TOTALS = {"commission_total": "owed", "commission_approved": "approved", "commission_pending": "pending"}


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    where: str  # the field, as a dotted path
    message: str

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.path}:{self.line}:{where} {self.message}"


class MappingError(ConfigurationError):
    """One or more mapping files are wrong; ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{count} in the mapping files:\n{lines}")


@dataclass(frozen=True)
class Field:
    """One output value: an expression (or a constant), transforms, and the type it is stored as."""

    name: str
    source: str  # the expression text, or the constant written in the file
    expression: ParsedResult | None
    constant: Any
    transforms: tuple[Transform, ...]
    type: str
    line: int

    @cached_property
    def path(self) -> tuple[str, ...] | None:
        """The keys of an expression that is a plain dotted path (``data.email``), which ``raw``
        looks up directly: what JMESPath answers for it, without walking its tree for every
        delivery (most fields are such paths). None for anything else."""
        return None if self.expression is None else _field_path(self.expression.parsed)

    def found(self, document: Any) -> Any:
        """What the expression finds in ``document`` (or the constant), before any transform."""
        if self.expression is None:
            return self.constant
        if self.path is not None:
            value = document
            for key in self.path:  # as JMESPath: a key of an object, else nothing (null stops it)
                value = value.get(key) if isinstance(value, dict) else None
                if value is None:
                    break
            return value
        return bounds.search(self.expression, document)

    def transformed(self, value: Any) -> Any:
        """``value`` through the field's transforms, in order."""
        for transform in self.transforms:
            value = transform.apply(value)
        return value

    def raw(self, document: Any) -> Any:
        """The value before it is made the field's type: the expression (or constant), transformed."""
        return self.transformed(self.found(document))

    def evaluate(self, document: Any) -> Any:
        return COERCE[self.type](self.raw(document))


def _described(f: Field | None) -> list | None:
    """What ``f`` computes, as plain values (None for no field): equal for fields that compute
    the same, whichever file and line they are written on."""
    if f is None:
        return None
    return [f.name, f.source, repr(f.constant), f.type, [[t.name, repr(t.argument)] for t in f.transforms]]


def _field_path(node: dict) -> tuple[str, ...] | None:
    """The keys of a JMESPath tree that only picks fields (``a.b.c``); None when it does more."""
    if node.get("type") == "field":
        return (node["value"],)
    if node.get("type") == "subexpression":
        parts = [_field_path(child) for child in node.get("children", ())]
        if parts and all(parts):
            return tuple(key for part in parts for key in part)
    return None


@dataclass(frozen=True)
class WarehouseTarget:
    table: str
    key: str
    columns: tuple[Field, ...]
    on_delete: tuple[Field, ...]

    def column_types(self) -> dict[str, str]:
        types = {f.name: f.type for f in self.columns}
        types.update({f.name: f.type for f in self.on_delete})
        return types


@dataclass(frozen=True)
class LedgerSpec:
    """Where a record's rewards are, and how each is read. Every state that is not a delete
    tells them; the ledger follows the newest."""

    rewards: ParsedResult
    rewards_source: str
    fields: dict[str, Field]


@dataclass(frozen=True)
class Reference:
    """A lookup to a parent record by its external id, e.g. Partnero_Partner__r -> Contact."""

    name: str  # the relationship name, ending in __r
    object: str
    external_id: str
    value: Field
    #: The ``salesforce.key`` of the mapping that writes the parent (the one whose object and
    #: external id this reference names), applied to the value; None: the value as it is.
    key: Field | None = None


@dataclass(frozen=True)
class SalesforceTarget:
    object: str
    external_id: str
    fields: tuple[Field, ...]
    on_delete: tuple[Field, ...]
    references: tuple[Reference, ...]
    #: The fields that receive the partner's commission totals, from the ledger: {"owed" |
    #: "approved" | "pending": field}; ``commission_total`` in the file names the owed one.
    commission: dict[str, str]
    #: Whether a delete also deletes the Salesforce record (off: it is only updated).
    hard_delete: bool
    #: What the external id holds: an expression over ``program`` and ``id`` (the record's
    #: identity, as text); None: the identity itself.
    key: Field | None = None

    @cached_property
    def named(self) -> frozenset[str]:
        """The names of what this section sends (fields, fields set by a delete, references)."""
        return frozenset({f.name for f in (*self.fields, *self.on_delete)} | {r.name for r in self.references})

    @property
    def signature(self) -> str:
        """A short digest of what this section sends: it changes when the mapping does, so
        records Salesforce refused under the old one are tried again."""

        field, key = _described, _described

        described = [
            self.object, self.external_id, [field(f) for f in self.fields], [field(f) for f in self.on_delete],
            [[r.name, r.object, r.external_id, field(r.value), *([key(r.key)] if r.key else [])]
             for r in self.references],
            sorted(self.commission.items()), self.hard_delete,
        ]
        if self.key is not None:  # without one, the digest stays what it was before keys existed
            described.append(key(self.key))
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Notification:
    """A ``notify`` entry: on which events, under which condition, which message goes to the webhook
    whose URL the variable ``url_variable`` holds."""

    name: str  # unique in its file: it names the notification in /ops and deduplicates it per delivery
    events: frozenset[str]
    when: ParsedResult | None  # sent when it is truthy (JMESPath's truth); None: always
    when_source: str | None
    url_variable: str
    format: str
    fields: tuple[Field, ...]
    message: message.Template
    line: int


@dataclass(frozen=True)
class Mapping:
    path: Path
    entity: str
    events: frozenset[str]
    deletes: frozenset[str]
    identity: Field
    version: Field
    warehouse: WarehouseTarget | None
    ledger: LedgerSpec | None
    salesforce: SalesforceTarget | None = None
    #: The Partnero list (``PARTNERO_LISTS``) backfill and reconcile load this mapping's records
    #: from: the file's ``list``, else the one its events are about; None: none.
    partnero_list: str | None = None
    #: The messages its deliveries send (``notify``), in the file's order.
    notify: tuple[Notification, ...] = ()


@dataclass(frozen=True)
class MappingSet:
    mappings: tuple[Mapping, ...]
    _by_event: dict[str, Mapping] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for mapping in self.mappings:
            for event in mapping.events:
                self._by_event[event] = mapping

    def for_event(self, event: str) -> Mapping | None:
        return self._by_event.get(event)

    def for_list(self, name: str) -> Mapping | None:
        """The mapping that loads Partnero's list ``name`` (``partners``…); None when none does."""
        return next((m for m in self.mappings if m.partnero_list == name), None)

    @property
    def events(self) -> frozenset[str]:
        return frozenset(self._by_event)

    def salesforce_objects(self) -> list[Mapping]:
        """Mappings with a Salesforce target, parents before the children that refer to them."""
        targets = {m.salesforce.object: m for m in self.mappings if m.salesforce is not None}
        ordered: list[Mapping] = []

        def visit(obj: str, path: tuple[str, ...]) -> None:
            mapping = targets.get(obj)
            if mapping is None or mapping in ordered or obj in path:
                return
            for reference in mapping.salesforce.references:
                visit(reference.object, (*path, obj))
            ordered.append(mapping)

        for obj in sorted(targets):
            visit(obj, ())
        return ordered


# -- loading -----------------------------------------------------------------------------------


def load_mappings(directory: Path, reserved_tables: Collection[str] = ()) -> MappingSet:
    """Load and check every ``*.yml``/``*.yaml`` in ``directory``; raises ``MappingError``.

    ``reserved_tables`` are the names a mapping may not write to: partnero-sync's own tables
    (``sync.store.schema.RESERVED_TABLES``, derived from the schema), which the caller passes in so
    this module stays free of the database.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MappingError([Problem(directory, 0, "", "mapping directory not found (set MAPPINGS_DIR)")])
    paths = sorted(p for p in directory.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    if not paths:
        raise MappingError([Problem(directory, 0, "", "no mapping files (*.yml) here")])
    problems: list[Problem] = []
    reserved = frozenset(reserved_tables)
    mappings = [m for m in (_load_one(path, problems, reserved) for path in paths) if m is not None]
    _check_across(mappings, problems)
    mappings = [_through_parent_keys(m, mappings, problems) for m in mappings]
    if problems:
        raise MappingError(problems)
    return MappingSet(tuple(mappings))


def _through_parent_keys(mapping: Mapping, mappings: list[Mapping], problems: list[Problem]) -> Mapping:
    """``mapping`` with each reference given the ``salesforce.key`` of the mapping that writes its
    parent (the one whose object and external id it names), so that it finds the parent by what
    the parent's external id holds. A reference to an object no mapping writes keeps its value; one
    whose parent is written by several mappings with different keys is a problem (which one?)."""
    target = mapping.salesforce
    if target is None or not target.references:
        return mapping
    resolved = []
    for reference in target.references:
        writers = [m for m in mappings if m.salesforce is not None
                   and m.salesforce.object.lower() == reference.object.lower()
                   and m.salesforce.external_id.lower() == reference.external_id.lower()]
        keys = {json.dumps(_described(m.salesforce.key)) for m in writers}
        if len(keys) > 1:
            names = " and ".join(m.path.name for m in writers)
            problems.append(Problem(mapping.path, reference.value.line, f"salesforce.references.{reference.name}",
                                    f"{reference.object}.{reference.external_id} is written by {names} with "
                                    "different keys: which one this reference goes through is ambiguous"))
        resolved.append(replace(reference, key=writers[0].salesforce.key if writers else None))
    return replace(mapping, salesforce=replace(target, references=tuple(resolved)))


def _load_one(path: Path, problems: list[Problem], reserved: frozenset[str]) -> Mapping | None:
    try:
        raw = load_yaml(path)
    except YamlProblem as exc:
        problems.append(Problem(path, exc.line, "", exc.message))
        return None
    before = len(problems)
    mapping = _Checker(path, problems, reserved).mapping(raw)
    return mapping if len(problems) == before else None


def _check_across(mappings: list[Mapping], problems: list[Problem]) -> None:
    seen_entities: dict[str, Mapping] = {}
    seen_events: dict[str, Mapping] = {}
    seen_tables: dict[str, Mapping] = {}
    seen_lists: dict[str, Mapping] = {}
    for mapping in mappings:
        if mapping.partnero_list is not None:
            if mapping.partnero_list in seen_lists:
                problems.append(Problem(mapping.path, 1, "list", f"Partnero's {mapping.partnero_list} list is also "
                                        f"loaded by {seen_lists[mapping.partnero_list].path.name}"))
            seen_lists.setdefault(mapping.partnero_list, mapping)
        if mapping.entity in seen_entities:
            problems.append(Problem(mapping.path, 1, "entity",
                                    f"entity {mapping.entity!r} is also mapped in {seen_entities[mapping.entity].path.name}"))
        seen_entities.setdefault(mapping.entity, mapping)
        for event in sorted(mapping.events):
            if event in seen_events:
                problems.append(Problem(mapping.path, 1, "events",
                                        f"{event} is also handled by {seen_events[event].path.name}"))
            seen_events.setdefault(event, mapping)
        if mapping.warehouse is not None:
            table = mapping.warehouse.table
            if table in seen_tables:
                problems.append(Problem(mapping.path, 1, "warehouse.table",
                                        f"table {table!r} is also written by {seen_tables[table].path.name}"))
            seen_tables.setdefault(table, mapping)


class _Checker:
    """Walks one file's YAML, building typed objects and noting every problem on the way."""

    TOP = {"entity", "list", "events", "deletes", "identity", "version", "warehouse", "ledger", "salesforce",
           "notify"}

    def __init__(self, path: Path, problems: list[Problem], reserved: frozenset[str] = frozenset()):
        self.path = path
        self.problems = problems
        self.reserved = reserved

    def problem(self, node: Any, key: Any, where: str, message: str) -> None:
        line = node.line_of(key) if isinstance(node, LineDict) else getattr(node, "line", 0)
        self.problems.append(Problem(self.path, line, where, message))

    def mapping(self, raw: Any) -> Mapping | None:
        if not isinstance(raw, LineDict):
            self.problems.append(Problem(self.path, 1, "", "a mapping file must be a YAML mapping (key: value)"))
            return None
        self.duplicates(raw, "")
        self.unknown_keys(raw, self.TOP, "")
        entity = self.required(raw, "entity", "")
        if entity is not None and not (isinstance(entity, str) and IDENTIFIER.match(entity)):
            self.problem(raw, "entity", "entity", "must be a lower-case name such as partner")
            entity = None
        events = self.event_list(raw, "events", required=True)
        deletes = self.event_list(raw, "deletes", required=False)
        for event in sorted(deletes - events):
            self.problem(raw, "deletes", "deletes", f"{event} is not in events")
        partnero_list = self.partnero_list(raw, events)
        identity = None
        if self.required(raw, "identity", "") is not None:
            identity = self.field(raw, "identity", "identity", default_type="string")
        version = self.field(raw, "version", "version", default_type="datetime") if "version" in raw else \
            self.field(LineDict(version=DEFAULT_VERSION), "version", "version", default_type="datetime")
        warehouse = self.warehouse(raw["warehouse"]) if "warehouse" in raw else None
        if "warehouse" not in raw:
            self.problem(raw, "warehouse", "warehouse", "missing: nothing to write, add a warehouse section")
        ledger = self.ledger(raw["ledger"], events, deletes) if "ledger" in raw else None
        salesforce = self.salesforce(raw["salesforce"]) if "salesforce" in raw else None
        notify = self.notify(raw["notify"], events) if "notify" in raw else []
        if None in (entity, identity, version, notify) or ("warehouse" in raw and warehouse is None):
            return None
        if ("ledger" in raw and ledger is None) or ("salesforce" in raw and salesforce is None):
            return None
        return Mapping(self.path, entity, frozenset(events), frozenset(deletes), identity, version, warehouse,
                       ledger, salesforce, partnero_list, tuple(notify))

    # -- pieces ------------------------------------------------------------------------------

    def partnero_list(self, raw: LineDict, events: set[str]) -> str | None:
        """The list the file names (``list``), else the one list its events are about."""
        if "list" in raw:
            named = raw["list"]
            if named not in PARTNERO_LISTS:
                self.problem(raw, "list", "list", f"must be one of Partnero's lists: {', '.join(PARTNERO_LISTS)}")
                return None
            return named
        about = sorted({LIST_OF_EVENTS[e.split(".")[0]] for e in events if e.split(".")[0] in LIST_OF_EVENTS})
        if len(about) > 1:
            self.problem(raw, "events", "list", f"the events are about several of Partnero's lists "
                         f"({', '.join(about)}): say which one backfill and reconcile load this file's "
                         f"records from with list: {about[0]}")
            return None
        return about[0] if about else None

    def duplicates(self, node: LineDict, where: str) -> None:
        for key, line in node.duplicates:
            self.problems.append(Problem(self.path, line, _join(where, key), "written twice"))

    def unknown_keys(self, node: LineDict, known: set[str], where: str) -> None:
        for key in node:
            if key not in known:
                self.problem(node, key, _join(where, key), f"unknown key (expected one of: {', '.join(sorted(known))})")

    def required(self, node: LineDict, key: str, where: str) -> Any:
        if key not in node or node[key] is None:
            self.problem(node, key, _join(where, key), "missing" if key not in node else "is empty")
            return None
        return node[key]

    def event_list(self, node: LineDict, key: str, required: bool) -> set[str]:
        if key not in node:
            if required:
                self.problem(node, key, key, "missing: list the events this file handles")
            return set()
        value = node[key]
        if not isinstance(value, list) or (required and not value):
            self.problem(node, key, key, "must be a list of event types such as partner.created")
            return set()
        events = set()
        for item in value:
            if not isinstance(item, str) or not EVENT.match(item):
                self.problem(node, key, key, f"{item!r} is not an event type such as partner.created")
            else:
                events.add(item)
        return events

    def expression(self, node: Any, key: Any, where: str, text: Any) -> ParsedResult | None:
        if not isinstance(text, str) or not text.strip():
            self.problem(node, key, where, "expression must be a non-empty string")
            return None
        if len(text) > MAX_EXPRESSION_LENGTH:
            self.problem(node, key, where, f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
            return None
        if _nesting(text) > MAX_EXPRESSION_NESTING:
            self.problem(node, key, where, f"expression nests brackets more than {MAX_EXPRESSION_NESTING} deep")
            return None
        try:
            compiled = jmespath.compile(text)
        except jmespath.exceptions.JMESPathError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.problem(node, key, where, f"bad expression {text!r}: {message}")
            return None
        except Exception as exc:  # noqa: BLE001 - whatever the parser trips on is a problem, not a traceback
            self.problem(node, key, where, f"bad expression {text!r}: {type(exc).__name__}")
            return None
        if _depth(compiled.parsed) > MAX_EXPRESSION_DEPTH:
            self.problem(node, key, where, f"expression nested more than {MAX_EXPRESSION_DEPTH} levels deep "
                                           "(a long chain of || counts one level each)")
            return None
        times, unbounded = bounds.growth(compiled.parsed)
        if unbounded is not None:
            self.problem(node, key, where, f"bad expression {text!r}: {unbounded}")
            return None
        if times > bounds.MAX_GROWTH:
            self.problem(node, key, where, f"expression can build a value {times:,.0f} times the size of the delivery "
                                           f"(at most {bounds.MAX_GROWTH}): it repeats what it reads")
            return None
        return compiled

    def field(self, node: LineDict, key: str, where: str, default_type: str = "string") -> Field | None:
        raw = node[key]
        line = node.line_of(key)
        if isinstance(raw, str):
            expression = self.expression(node, key, where, raw)
            if expression is None:
                return None
            return Field(str(key), raw, expression, None, (), default_type, line)
        if not isinstance(raw, LineDict):
            self.problem(node, key, where, "must be an expression (text) or a mapping with from/value")
            return None
        self.duplicates(raw, where)
        self.unknown_keys(raw, {"from", "value", "type", "transforms"}, where)
        expression, constant, source = None, None, ""
        if ("from" in raw) == ("value" in raw):
            said = "both given" if "from" in raw else "missing"
            self.problem(raw, "from", where, f"from or value: {said} (give exactly one of from, an expression, or "
                                             "value, a constant)")
            return None
        if "from" in raw:
            expression = self.expression(raw, "from", _join(where, "from"), raw["from"])
            if expression is None:
                return None
            source = raw["from"]
        else:
            constant = raw["value"]
            source = repr(constant)
        transforms = self.transforms(raw, where)
        if transforms is None:
            return None
        produced = ANY if expression is not None else literal_type(constant)
        for transform in transforms:
            if transform.produces != ANY:
                produced = transform.produces
        declared = self.column_type(raw, where, produced, default_type)
        if declared is None:
            return None
        built = Field(str(key), source, expression, constant, tuple(transforms), declared, line)
        unfit = _unfit_literal(built)
        if unfit is not None:
            label, problem = unfit
            self.problem(raw, label, _join(where, label), f"cannot be stored as {declared}: {problem}")
            return None
        return built

    def column_type(self, raw: LineDict, where: str, produced: str, default_type: str) -> str | None:
        """The type a field's column is declared (else what its value ``produced``, else
        ``default_type``); None, with the problem noted, when it is unknown or clashes."""
        declared = raw.get("type")
        if declared is None:
            return produced if produced != ANY else default_type
        if declared not in TYPES:
            self.problem(raw, "type", _join(where, "type"), f"unknown type {declared!r} (known: {', '.join(TYPES)})")
            return None
        if not compatible(produced, declared):
            self.problem(raw, "type", _join(where, "type"),
                         f"type clash: the value is {produced} but the column is declared {declared}")
            return None
        return declared

    def transforms(self, raw: LineDict, where: str) -> list[Transform] | None:
        items = raw.get("transforms", [])
        if items is None:
            items = []
        if not isinstance(items, list):
            self.problem(raw, "transforms", _join(where, "transforms"), "must be a list")
            return None
        built: list[Transform] = []
        ok = True
        for item in items:
            if isinstance(item, str):
                name, argument, has_argument = item, None, False
            elif isinstance(item, LineDict) and len(item) == 1:
                name, argument = next(iter(item.items()))
                has_argument = True
            else:
                self.problem(raw, "transforms", _join(where, "transforms"),
                             f"{item!r}: a transform is a name (lower) or name: argument (default: x)")
                ok = False
                continue
            spec = BUILDERS.get(name)
            if spec is None:
                self.problem(raw, "transforms", _join(where, "transforms"),
                             f"unknown transform {name!r} (known: {', '.join(sorted(BUILDERS))})")
                ok = False
                continue
            needs_argument, produces, build = spec
            if needs_argument != has_argument:
                self.problem(raw, "transforms", _join(where, "transforms"),
                             f"{name} {'needs an argument, as ' + name + ': …' if needs_argument else 'takes no argument'}")
                ok = False
                continue
            if name == "map" and not isinstance(argument, dict):
                self.problem(raw, "transforms", _join(where, "transforms"), "map needs a mapping of values, as map: {a: b}")
                ok = False
                continue
            if name == "join" and not isinstance(argument, str):
                self.problem(raw, "transforms", _join(where, "transforms"), "join needs a separator text, as join: ', '")
                ok = False
                continue
            if name in ("default", "constant"):
                produces = ANY
            built.append(Transform(name, argument, produces, build(argument)))
        return built if ok else None

    def columns(self, node: LineDict, key: str, where: str, required: bool) -> list[Field] | None:
        raw = node.get(key)
        if raw is None:
            if required:
                self.problem(node, key, where, "missing: list the columns to write")
                return None
            return []
        if not isinstance(raw, LineDict) or (required and not raw):
            self.problem(node, key, where, "must be a mapping of column: expression")
            return None
        self.duplicates(raw, where)
        if len(raw) > MAX_COLUMNS:
            self.problem(node, key, where, f"more than {MAX_COLUMNS} columns")
            return None
        return self.named_fields(raw, where, "column", taken=True)

    def named_fields(self, raw: LineDict, where: str, what: str, taken: bool = False) -> list[Field] | None:
        """Each ``name: expression`` (or field spec) of ``raw``, in order; None (problems noted) when
        any is wrong. A name is an identifier; with ``taken``, not one partnero-sync fills itself
        (a warehouse column). ``what`` is what a problem calls a name ("column", "field")."""
        fields, ok = [], True
        for name in raw:
            at = _join(where, name)
            if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):  # fullmatch: no "name\n"
                self.problem(raw, name, at, f"a {what} name is lower-case letters, digits and _")
                ok = False
                continue
            if taken and (name.startswith(SYSTEM_PREFIX) or name == PROGRAM_COLUMN):
                self.problem(raw, name, at, _taken(name))
                ok = False
                continue
            built = self.field(raw, name, at)
            if built is None:
                ok = False
            else:
                fields.append(built)
        return fields if ok else None

    def warehouse(self, raw: Any) -> WarehouseTarget | None:
        where = "warehouse"
        if not isinstance(raw, LineDict):
            self.problems.append(Problem(self.path, getattr(raw, "line", 1), where, "must be a mapping"))
            return None
        self.duplicates(raw, where)
        self.unknown_keys(raw, {"table", "key", "columns", "on_delete"}, where)
        table = self.required(raw, "table", where)
        if table is not None and not (isinstance(table, str) and IDENTIFIER.match(table)):
            self.problem(raw, "table", "warehouse.table", "a table name is lower-case letters, digits and _")
            table = None
        elif table is None:
            pass
        elif table in self.reserved:
            self.problem(raw, "table", "warehouse.table", f"{table} is partnero-sync's own table")
            table = None
        elif table.startswith(SYSTEM_TABLE_PREFIXES):
            self.problem(raw, "table", "warehouse.table", f"{table}: names starting with "
                         f"{' or '.join(SYSTEM_TABLE_PREFIXES)} belong to the database")
            table = None
        key = self.required(raw, "key", where)
        if key is not None and not (isinstance(key, str) and IDENTIFIER.match(key)):
            self.problem(raw, "key", "warehouse.key", "a column name is lower-case letters, digits and _")
            key = None
        elif key is not None and (key.startswith(SYSTEM_PREFIX) or key == PROGRAM_COLUMN):
            self.problem(raw, "key", "warehouse.key", _taken(key))
            key = None
        columns = self.columns(raw, "columns", "warehouse.columns", required=True)
        on_delete = self.columns(raw, "on_delete", "warehouse.on_delete", required=False)
        if None in (table, key, columns, on_delete):
            return None
        ok = True
        if len({f.name for f in [*columns, *on_delete]}) > MAX_COLUMNS:
            self.problem(raw, "columns", "warehouse.columns", f"more than {MAX_COLUMNS} columns with on_delete's")
            ok = False
        for f in [*columns, *on_delete]:
            if f.name == key:
                self.problems.append(Problem(self.path, f.line, f"warehouse.columns.{f.name}",
                                             "duplicate column: the key column is filled from identity"))
                ok = False
        types = {f.name: f for f in columns}
        for f in on_delete:
            other = types.get(f.name)
            if other is not None and other.type != f.type:
                self.problems.append(Problem(self.path, f.line, f"warehouse.on_delete.{f.name}",
                                             f"type clash: {f.type} here, {other.type} in columns"))
                ok = False
        return WarehouseTarget(table, key, tuple(columns), tuple(on_delete)) if ok else None

    def ledger(self, raw: Any, events: set[str], deletes: set[str]) -> LedgerSpec | None:
        where = "ledger"
        if not isinstance(raw, LineDict):
            self.problems.append(Problem(self.path, getattr(raw, "line", 1), where, "must be a mapping"))
            return None
        self.duplicates(raw, where)
        self.unknown_keys(raw, {"rewards", "book_on", *LEDGER_FIELDS, *LEDGER_OPTIONAL}, where)
        rewards = None
        if self.required(raw, "rewards", where) is not None:
            rewards = self.expression(raw, "rewards", "ledger.rewards", raw["rewards"])
        ok = rewards is not None
        if "book_on" in raw:
            # Kept for older files. The ledger follows the newest state, so a state that told no
            # rewards would leave it depending on the order deliveries arrive in.
            book_on = self.event_list(raw, "book_on", required=True)
            for event in sorted(book_on - events):
                self.problem(raw, "book_on", "ledger.book_on", f"{event} is not in events")
            missing = sorted(events - deletes - book_on)
            if missing:
                self.problem(raw, "book_on", "ledger.book_on",
                             f"every event that is not a delete tells the rewards (the ledger follows the newest "
                             f"state): add {', '.join(missing)}, or leave book_on out")
                ok = False
        fields: dict[str, Field] = {}
        for name in (*LEDGER_FIELDS, *LEDGER_OPTIONAL):
            if name in LEDGER_OPTIONAL and name not in raw:
                continue
            if self.required(raw, name, where) is None:
                ok = False
                continue
            built = self.field(raw, name, f"ledger.{name}", default_type=LEDGER_TYPES[name])
            if built is None:
                ok = False
            elif built.type != LEDGER_TYPES[name]:
                self.problem(raw, name, f"ledger.{name}", f"type clash: must be {LEDGER_TYPES[name]}, not {built.type}")
                ok = False
            else:
                fields[name] = built
        if not ok:
            return None
        return LedgerSpec(rewards, raw["rewards"], fields)

    def salesforce(self, raw: Any) -> SalesforceTarget | None:
        where = "salesforce"
        if not isinstance(raw, LineDict):
            self.problems.append(Problem(self.path, getattr(raw, "line", 1), where, "must be a mapping"))
            return None
        self.duplicates(raw, where)
        self.unknown_keys(raw, {"object", "external_id", "key", "fields", "on_delete", "references",
                                *COMMISSION_TOTALS, "hard_delete"}, where)
        ok = True
        names = {}
        for key in ("object", "external_id"):
            value = self.required(raw, key, where)
            if value is not None and not (isinstance(value, str) and SF_NAME.match(value)):
                self.problem(raw, key, f"{where}.{key}", "a Salesforce API name such as Contact or Partnero_Id__c")
                value = None
            names[key] = value
            ok &= value is not None
        fields = self.sf_fields(raw, "fields", f"{where}.fields", required=True)
        on_delete = self.sf_fields(raw, "on_delete", f"{where}.on_delete", required=False)
        references = self.references(raw, f"{where}.references")
        commission = {}
        for key, total in COMMISSION_TOTALS.items():
            name = raw.get(key)
            if name is None:
                continue
            if not (isinstance(name, str) and SF_NAME.match(name)):
                self.problem(raw, key, f"{where}.{key}",
                             f"a Salesforce field name (it receives the {total} commission)")
                ok = False
            else:
                commission[total] = name
        hard_delete = raw.get("hard_delete", False)
        if not isinstance(hard_delete, bool):
            self.problem(raw, "hard_delete", f"{where}.hard_delete", "must be true or false")
            ok = False
        key = self.key(raw, f"{where}.key") if "key" in raw else None
        if not ok or fields is None or on_delete is None or references is None or key is False:
            return None
        if not self.sf_names_distinct(raw, where, names["external_id"], fields, references, commission):
            return None
        return SalesforceTarget(names["object"], names["external_id"], tuple(fields), tuple(on_delete),
                                tuple(references), commission, hard_delete, key or None)

    def key(self, raw: LineDict, where: str) -> Field | bool:
        """The section's ``key``: an expression over ``program`` and ``id`` that gives, for every
        sample of ``KEY_SAMPLES``, an id (``transforms.id_problem``), and different ones for two
        ids of one program (two records would share a Salesforce record; one id of two programs
        may: the mapping's choice); False, with the problem noted, otherwise."""
        built = self.field(raw, "key", where, default_type="string")
        if built is None:
            return False
        given: dict[tuple[str, Any], str] = {}
        for program, identity in KEY_SAMPLES:
            sample = f"program {program!r} and id {identity!r}"
            try:
                value = built.raw({"program": program, "id": identity})
            except Exception as exc:  # noqa: BLE001 - whatever it trips on is a problem, not a traceback
                self.problem(raw, "key", where, f"cannot be computed for {sample} ({_why(exc)})")
                return False
            problem = "gives nothing" if value is None else id_problem(value, "an external id")
            if problem is None and (program, value) in given:
                problem = f"gives what it gives for {given[program, value]}: two records would share one external id"
            if problem is not None:
                self.problem(raw, "key", where, f"for {sample} it {problem}")
                return False
            given[program, value] = sample
        return built

    def sf_names_distinct(self, raw: LineDict, where: str, external_id: str, fields: list[Field],
                          references: list[Reference], commission: dict[str, str]) -> bool:
        """Whether each Salesforce field is written from one place only (never the external id,
        which is filled from identity); each one that is not is noted as a problem."""
        ok = True
        taken: dict[str, str] = {}
        for label, name in [*((f"fields.{f.name}", f.name) for f in fields),
                            *((f"references.{r.name}", r.name) for r in references),
                            *((key, raw[key]) for key in COMMISSION_TOTALS if COMMISSION_TOTALS[key] in commission)]:
            if name in taken or name == external_id:
                self.problem(raw, label.split(".")[0], f"{where}.{label}",
                             "duplicate field" + (": the external id is filled from identity"
                                                  if name == external_id else f" (also {taken[name]})"))
                ok = False
            taken.setdefault(name, label)
        return ok

    def sf_fields(self, node: LineDict, key: str, where: str, required: bool) -> list[Field] | None:
        raw = node.get(key)
        if raw is None:
            if required:
                self.problem(node, key, where, "missing: list the Salesforce fields to write")
                return None
            return []
        if not isinstance(raw, LineDict):
            self.problem(node, key, where, "must be a mapping of Field__c: expression")
            return None
        self.duplicates(raw, where)
        if len(raw) > MAX_COLUMNS:
            self.problem(node, key, where, f"more than {MAX_COLUMNS} fields")
            return None
        fields, ok = [], True
        for name in raw:
            if not isinstance(name, str) or not SF_NAME.match(name):
                self.problem(raw, name, _join(where, name), "a Salesforce field name such as Email or Status__c")
                ok = False
                continue
            built = self.field(raw, name, _join(where, name), default_type="json")
            ok &= built is not None
            if built is not None:
                fields.append(built)
        return fields if ok else None

    def references(self, node: LineDict, where: str) -> list[Reference] | None:
        raw = node.get("references")
        if raw is None:
            return []
        if not isinstance(raw, LineDict):
            self.problem(node, "references", where, "must be a mapping of Parent__r: {object, external_id, from}")
            return None
        self.duplicates(raw, where)
        built, ok = [], True
        for name, spec in raw.items():
            here = _join(where, name)
            if not isinstance(name, str) or not name.endswith("__r") or not SF_NAME.match(name):
                self.problem(raw, name, here, "a relationship name ends in __r, such as Partnero_Partner__r")
                ok = False
                continue
            if not isinstance(spec, LineDict):
                self.problem(raw, name, here, "must be a mapping with object, external_id and from")
                ok = False
                continue
            self.unknown_keys(spec, {"object", "external_id", "from", "type", "transforms", "value"}, here)
            obj, ext = spec.get("object"), spec.get("external_id")
            for key, value in (("object", obj), ("external_id", ext)):
                if not (isinstance(value, str) and SF_NAME.match(value)):
                    self.problem(spec, key, _join(here, key), "missing, or not a Salesforce API name")
                    ok = False
            value_spec = LineDict({k: v for k, v in spec.items() if k not in ("object", "external_id")})
            value_spec.line, value_spec.lines = spec.line, spec.lines
            holder = LineDict({name: value_spec})
            holder.line, holder.lines = raw.line, raw.lines
            value = self.field(holder, name, here, default_type="string")
            if value is None:
                ok = False
            elif ok:
                built.append(Reference(name, obj, ext, value))
        return built if ok else None

    # -- notify -----------------------------------------------------------------------------

    def notify(self, raw: Any, events: set[str]) -> list[Notification] | None:
        """The file's ``notify`` entries; None (problems noted) when any is wrong. Names are unique."""
        if not isinstance(raw, list) or len(raw) > MAX_NOTIFICATIONS:
            self.problems.append(Problem(self.path, getattr(raw, "line", 1), "notify",
                                         f"must be a list of at most {MAX_NOTIFICATIONS} entries (- name: …)"))
            return None
        built, first, ok = [], {}, True
        for position, entry in enumerate(raw):
            made = self.notification(entry, position + 1, events)
            if made is None:
                ok = False
                continue
            if made.name in first:
                self.problems.append(Problem(self.path, made.line, f"notify.{made.name}.name",
                                             f"duplicate name (entry {first[made.name]} has it too): a name "
                                             "tells a delivery's notifications apart"))
                ok = False
            first.setdefault(made.name, position + 1)
            built.append(made)
        return built if ok else None

    def notification(self, entry: Any, position: int, events: set[str]) -> Notification | None:
        where = f"notify[{position}]"
        if not isinstance(entry, LineDict):
            self.problems.append(Problem(self.path, getattr(entry, "line", 1), where,
                                         "must be a mapping with name, url and message"))
            return None
        name = self.required(entry, "name", where)
        if name is not None and not (isinstance(name, str) and NOTIFY_NAME.match(name)):
            self.problem(entry, "name", f"{where}.name", "a name is lower-case letters, digits, _ and - "
                                                         "(such as big-sale)")
            name = None
        where = f"notify.{name}" if name is not None else where
        self.duplicates(entry, where)
        self.unknown_keys(entry, NOTIFY_KEYS, where)
        on = self.notify_events(entry, f"{where}.on", events)
        when = self.expression(entry, "when", f"{where}.when", entry["when"]) if "when" in entry else None
        url = self.url_variable(entry, where)
        form = entry.get("format", DEFAULT_MESSAGE_FORMAT)
        if form not in MESSAGE_FORMATS:
            self.problem(entry, "format", f"{where}.format", f"must be one of {', '.join(MESSAGE_FORMATS)}")
        fields = self.notify_fields(entry, f"{where}.fields")
        template = self.template(entry, where, fields)
        if None in (name, on, url, fields, template) or form not in MESSAGE_FORMATS or ("when" in entry and when is None):
            return None
        return Notification(name, frozenset(on), when, entry.get("when"), url, form, tuple(fields.values()),
                            template, entry.line_of("name"))

    def notify_events(self, entry: LineDict, where: str, events: set[str]) -> set[str] | None:
        """The events an entry is sent on: its ``on``, among the file's events; else all of them."""
        if "on" not in entry:
            return set(events)
        listed = entry["on"]
        if not isinstance(listed, list) or not listed or not all(isinstance(e, str) for e in listed):
            self.problem(entry, "on", where, "must be a list of event types, among the file's events")
            return None
        strangers = sorted(set(listed) - events)
        if strangers:
            self.problem(entry, "on", where, f"{', '.join(strangers)} not among this file's events "
                                             f"({', '.join(sorted(events))})")
            return None
        return set(listed)

    def url_variable(self, entry: LineDict, where: str) -> str | None:
        """The name of the variable that holds the webhook's URL (never the URL: it is not quoted)."""
        named = self.required(entry, "url", where)
        if named is None:
            return None
        if not (isinstance(named, str) and URL_VARIABLE.match(named)):
            self.problem(entry, "url", f"{where}.url", f"the name of an environment variable ending in "
                                                       f"{WEBHOOK_URL_SUFFIX}, such as SALES{WEBHOOK_URL_SUFFIX}, "
                                                       "which holds the URL (a URL is a secret: never in the file)")
            return None
        return named

    def notify_fields(self, entry: LineDict, where: str) -> dict[str, Field] | None:
        """The fields a message shows: name: expression, or {from|value, type, transforms}, as columns."""
        raw = entry.get("fields", LineDict())
        if not isinstance(raw, LineDict) or len(raw) > MAX_COLUMNS:
            self.problem(entry, "fields", where, f"must be a mapping of at most {MAX_COLUMNS} name: expression")
            return None
        self.duplicates(raw, where)
        fields = self.named_fields(raw, where, "field")
        return {field.name: field for field in fields} if fields is not None else None

    def template(self, entry: LineDict, where: str, fields: dict[str, Field] | None) -> message.Template | None:
        """The entry's ``message``: only names of its fields, each with a safe format spec; a spec
        only a number takes (``,.2f``) only on an integer or decimal field."""
        if self.required(entry, "message", where) is None:
            return None
        template, problem = message.parse(entry["message"])
        if problem is not None:
            self.problem(entry, "message", f"{where}.message", problem)
            return None
        if fields is None:
            return template
        for name in template.names:
            if name not in fields:
                known = ", ".join(fields) or "none: add fields"
                self.problem(entry, "message", f"{where}.message", f"{{{name}}}: unknown field (fields: {known})")
                return None
            spec = template.numeric(name)
            if spec is not None and fields[name].type not in message.NUMBER_FIELDS:
                self.problem(entry, "message", f"{where}.message",
                             f"{{{name}:{spec}}} formats a number, but {name} is {fields[name].type}: "
                             f"give it type: decimal (or integer)")
                return None
        return template


def unset_urls(mappings: MappingSet, available: Collection[str]) -> list[Problem]:
    """The ``notify`` entries whose URL variable is not among ``available`` (the variables set),
    each as a problem naming file, entry and variable: their messages would fail, not be sent."""
    return [Problem(m.path, n.line, f"notify.{n.name}.url",
                    f"{n.url_variable} is not set: this entry's messages would fail (set it to the webhook's URL)")
            for m in mappings.mappings for n in m.notify if n.url_variable not in available]


def _taken(column: str) -> str:
    """Why a warehouse column may not be named ``column``: partnero-sync fills it on every table."""
    if column == PROGRAM_COLUMN:
        return f"{PROGRAM_COLUMN} is kept for partnero-sync: it fills the program's name on every table"
    return f"names starting with {SYSTEM_PREFIX} are kept for partnero-sync"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _nesting(text: str) -> int:
    """How deeply brackets, braces and parentheses nest in an expression, outside its quotes."""
    depth = deepest = 0
    quote = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _depth(tree: dict) -> int:
    """How deeply a parsed expression nests (its evaluation recurses that deep)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = [*node.get("children", ()), node.get("value")]
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict))
    return deepest


def _unfit_literal(field: Field) -> tuple[str, str] | None:
    """A value written in the file that can never be stored as ``field``'s type, as (the key it
    is written under, why): the constant, a default or constant transform (what the field gets
    when the delivery has no value), or a value ``map`` gives."""
    coerce = COERCE[field.type]

    def run(transforms: tuple[Transform, ...], value: Any) -> None:
        for transform in transforms:
            value = transform.apply(value)
        coerce(value)

    try:
        run(field.transforms, field.constant if field.expression is None else None)
    except Exception as exc:  # noqa: BLE001 - a ValueProblem, or whatever a transform trips on
        return ("value" if field.expression is None else "transforms"), _why(exc)
    for position, transform in enumerate(field.transforms):
        if transform.name == "map":
            for written in transform.argument:
                try:
                    run(field.transforms[position:], written)
                except Exception as exc:  # noqa: BLE001
                    return "transforms", f"map's value for {written!r}: {_why(exc)}"
    return None


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ValueProblem) else type(exc).__name__

