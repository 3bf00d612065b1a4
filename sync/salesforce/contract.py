"""What the org must have for the mappings' ``salesforce:`` sections: objects, fields and their kinds,
external ids, lookups. Pure: ``crm check`` compares it with the org, ``crm setup`` builds from it."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from sync.mapping.spec import Field, Mapping, MappingSet, SalesforceTarget

#: What a decimal of the mappings holds (NUMERIC(18, 6), sync/mapping/transforms.py), as a
#: Salesforce Number's precision and scale.
DECIMAL_PRECISION, DECIMAL_SCALE = 18, 6


class FieldKind(enum.StrEnum):
    """The kind of Salesforce field a mapping's value needs, from its ``type:``."""

    TEXT = "text"
    NUMBER = "number"  # a decimal
    INTEGER = "integer"
    CHECKBOX = "checkbox"
    DATETIME = "datetime"
    ANY = "any"  # the mapping does not say (an expression without a type): any plain field takes it
    LOOKUP = "lookup"


#: A mapping's ``type:`` as the kind of field it needs.
_KINDS = {"string": FieldKind.TEXT, "text": FieldKind.TEXT, "decimal": FieldKind.NUMBER,
          "integer": FieldKind.INTEGER, "boolean": FieldKind.CHECKBOX, "datetime": FieldKind.DATETIME,
          "json": FieldKind.ANY}


@dataclass(frozen=True)
class FieldNeed:
    """One field the org must have on an object, and what it must be."""

    name: str
    kind: FieldKind
    #: Where the mapping names it ("mappings/partner.yml:40"), for the admin's report.
    source: str
    #: The longest text the mapping can send, when it can say (constants only); else None.
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None
    #: An external id: marked External ID and Unique.
    external_id: bool = False
    #: For a lookup: its relationship name (``Partnero_Partner__r``), the parent object and the
    #: parent's external id the mapping finds the parent by.
    relationship_name: str | None = None
    target: str | None = None
    target_external_id: str | None = None


@dataclass(frozen=True)
class ObjectNeed:
    """One object the org must have, with the fields the mappings need on it."""

    name: str
    fields: tuple[FieldNeed, ...]
    #: Whether a mapping writes its records (else it is only a lookup's parent): then every field
    #: the org requires on it must be filled by the mapping.
    written: bool
    source: str

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def field(self, name: str) -> FieldNeed | None:
        return next((f for f in self.fields if f.name.lower() == name.lower()), None)


@dataclass(frozen=True)
class Contract:
    """Every object the mappings need, parents before the children that look them up."""

    objects: tuple[ObjectNeed, ...]

    def object(self, name: str) -> ObjectNeed | None:
        return next((o for o in self.objects if o.name.lower() == name.lower()), None)


def contract(mappings: MappingSet | Iterable[MappingSet]) -> Contract:
    """The contract the mappings' ``salesforce:`` sections make with the org: of one set, or of
    every program's sets together (the org serves them all, so it must fit their union)."""
    needs: dict[str, dict[str, FieldNeed]] = {}
    written: dict[str, str] = {}
    for mapping in written_by(mappings):
        target = mapping.salesforce
        written.setdefault(target.object, _where(mapping.path))
        for need in _needs_of(target, mapping.path):
            _add(needs.setdefault(target.object, {}), need)
        for reference in target.references:
            parent = needs.setdefault(reference.object, {})
            _add(parent, FieldNeed(reference.external_id, FieldKind.TEXT, _where(mapping.path, reference.value.line),
                                   external_id=True))
    ordered = salesforce_order(mappings)
    names = [*(n for n in needs if n not in ordered), *ordered]
    return Contract(tuple(ObjectNeed(name, tuple(needs[name].values()), name in written,
                                     written.get(name, _parent_source(needs[name])))
                          for name in names))


def mapping_sets(mappings: MappingSet | Iterable[MappingSet]) -> list[MappingSet]:
    """One set, or several (each program's), as a list without repeats: programs that share a
    mapping directory share one set."""
    sets = [mappings] if isinstance(mappings, MappingSet) else list(mappings)
    return list({id(s): s for s in sets}.values())


def written_by(mappings: MappingSet | Iterable[MappingSet]) -> list[Mapping]:
    """Every mapping with a Salesforce section, of one set or of several, each set's parents first."""
    return [m for s in mapping_sets(mappings) for m in s.salesforce_objects()]


def salesforce_order(mappings: MappingSet | Iterable[MappingSet]) -> list[str]:
    """The Salesforce objects the mappings write, parents before the children that look them up,
    across every set given: a flush sends them in this order, whichever program's they are."""
    parents: dict[str, dict[str, None]] = {}  # each object's parents, in the order its mappings name them
    for mapping in written_by(mappings):
        named = dict.fromkeys(r.object for r in mapping.salesforce.references)
        parents.setdefault(mapping.salesforce.object, {}).update(named)
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name not in parents or name in ordered or name in path:
            return
        for parent in parents[name]:
            visit(parent, (*path, name))
        ordered.append(name)

    for name in sorted(parents):
        visit(name, ())
    return ordered


def _needs_of(target: SalesforceTarget, path: Path) -> list[FieldNeed]:
    """The fields one ``salesforce:`` section writes: external id, fields, on_delete's, lookups and
    the commission totals."""
    needs = [FieldNeed(target.external_id, FieldKind.TEXT, _where(path), external_id=True)]
    for f in (*target.fields, *target.on_delete):
        kind = _KINDS[f.type]
        numeric = kind is FieldKind.NUMBER
        needs.append(FieldNeed(f.name, kind, _where(path, f.line), max_length=_constant_length(f),
                               precision=DECIMAL_PRECISION if numeric else None,
                               scale=DECIMAL_SCALE if numeric else None))
    for r in target.references:
        needs.append(FieldNeed(lookup_field(r.name), FieldKind.LOOKUP, _where(path, r.value.line),
                               relationship_name=r.name, target=r.object, target_external_id=r.external_id))
    for name in target.commission.values():
        needs.append(FieldNeed(name, FieldKind.NUMBER, _where(path), precision=DECIMAL_PRECISION,
                               scale=DECIMAL_SCALE))
    return needs


def lookup_field(relationship_name: str) -> str:
    """The lookup field behind a custom relationship: ``Partnero_Partner__r`` is ``Partnero_Partner__c``."""
    return relationship_name[: -len("__r")] + "__c"


def _add(fields: dict[str, FieldNeed], need: FieldNeed) -> None:
    """One need per field: a field written twice (``fields`` and ``on_delete``) takes the kind
    that says most, and the longer constant (unknown when either value comes from a delivery)."""
    key = need.name.lower()
    known = fields.get(key)
    if known is None:
        fields[key] = need
        return
    kind = known.kind if known.kind is not FieldKind.ANY else need.kind
    both = known.max_length is not None and need.max_length is not None
    fields[key] = replace(known, kind=kind, external_id=known.external_id or need.external_id,
                          max_length=max(known.max_length, need.max_length) if both else None)


def _constant_length(f: Field) -> int | None:
    """How long a text field's value can be, when the mapping writes a constant; None otherwise
    (a value from a delivery can be any length)."""
    if f.expression is not None or _KINDS[f.type] not in (FieldKind.TEXT, FieldKind.ANY):
        return None
    value = f.evaluate({})
    return len(value) if isinstance(value, str) else None


def _where(path: Path, line: int | None = None) -> str:
    return f"{path}:{line}" if line else str(path)


def _parent_source(fields: dict[str, FieldNeed]) -> str:
    return next(iter(fields.values())).source
