"""How the org fits the contract: each mapped object's describe (the sObject Describe JSON) compared
with what the mappings need, as findings an admin can act on. Pure."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sync.salesforce.contract import Contract, FieldKind, FieldNeed, ObjectNeed

#: Salesforce field types (Field.type of the sObject Describe) that take each kind of value.
_TEXTS = frozenset({"string", "textarea", "email", "url", "phone", "picklist", "multipicklist", "combobox",
                    "encryptedstring"})
_NUMBERS = frozenset({"double", "currency", "percent"})
_TAKES: dict[FieldKind, frozenset[str]] = {
    FieldKind.TEXT: _TEXTS,
    FieldKind.NUMBER: _NUMBERS,
    FieldKind.INTEGER: _NUMBERS | {"int", "long"},
    FieldKind.CHECKBOX: frozenset({"boolean"}),
    FieldKind.DATETIME: frozenset({"datetime"}),
    FieldKind.ANY: _TEXTS | _NUMBERS | {"int", "long", "boolean", "date", "datetime", "time"},
    FieldKind.LOOKUP: frozenset({"reference"}),
}
#: What an admin creates for each kind, in Setup's words.
_CREATE_AS = {FieldKind.TEXT: "Text", FieldKind.NUMBER: "Number or Currency", FieldKind.INTEGER: "Number",
              FieldKind.CHECKBOX: "Checkbox", FieldKind.DATETIME: "Date/Time", FieldKind.ANY: "Text",
              FieldKind.LOOKUP: "Lookup Relationship"}


class Misfit(enum.StrEnum):
    """What is wrong with one object or field."""

    OBJECT_MISSING = "object missing"
    FIELD_MISSING = "field missing"
    NOT_WRITABLE = "not writable"
    WRONG_TYPE = "wrong type"
    TOO_SHORT = "too short"
    NOT_EXTERNAL_ID = "not an external id"
    NOT_UNIQUE = "not unique"
    WRONG_LOOKUP = "wrong lookup"
    REQUIRED_UNFILLED = "required, never filled"


@dataclass(frozen=True)
class Finding:
    """One misfit, in words an admin can act on (never a record's value)."""

    object: str
    field: str | None
    problem: Misfit
    detail: str
    fix: str
    source: str

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "problem": self.problem.value}


def findings(contract: Contract, describes: Mapping[str, dict | None]) -> list[Finding]:
    """Every misfit of the org with ``contract``; ``describes`` holds each object's describe, None
    for an object the org does not have (or the integration user cannot see)."""
    found: list[Finding] = []
    for need in contract.objects:
        described = describes.get(need.name)
        if described is None:
            found.append(Finding(need.name, None, Misfit.OBJECT_MISSING,
                                 "the org has no such object, or the integration user cannot see it",
                                 _object_fix(need), need.source))
            found.extend(Finding(need.name, f.name, Misfit.FIELD_MISSING, "its object is missing",
                                 _field_fix(need, f), f.source) for f in need.fields)
            continue
        fields = {f.get("name", "").lower(): f for f in described.get("fields") or ()}
        for field_need in need.fields:
            found.extend(_field_findings(need, field_need, fields.get(field_need.name.lower())))
        if need.written:
            found.extend(_unfilled(need, fields.values()))
    return found


def _object_fix(need: ObjectNeed) -> str:
    if need.custom:
        return (f"create the custom object {need.name} (Setup > Object Manager > Create), and give the integration "
                "user Read, Create and Edit on it (a permission set)")
    return f"give the integration user Read, Create and Edit on {need.name} (its profile or a permission set)"


def _field_findings(obj: ObjectNeed, need: FieldNeed, described: dict | None) -> list[Finding]:
    def finding(problem: Misfit, detail: str, fix: str) -> Finding:
        return Finding(obj.name, need.name, problem, detail, fix, need.source)

    if described is None:
        return [finding(Misfit.FIELD_MISSING, "not in the org, or hidden from the integration user (field-level "
                        "security)", _field_fix(obj, need))]
    kind = described.get("type")
    if kind not in _TAKES[need.kind]:
        return [finding(Misfit.WRONG_TYPE, f"it is a {kind} field; the mapping sends {_sends(need)}",
                        f"use a {_CREATE_AS[need.kind]} field, or change the mapping's type:")]
    found = []
    if obj.written and not (described.get("createable") and described.get("updateable")):
        found.append(finding(Misfit.NOT_WRITABLE, "the integration user can read it but not "
                             + ("create or edit it" if not described.get("createable") else "edit it"),
                             "make it editable for the integration user (field-level security in a permission "
                             "set); a formula or roll-up field cannot be written"))
    length = described.get("length") or 0
    if need.max_length is not None and kind in _TEXTS - {"picklist", "multipicklist"} and length < need.max_length:
        found.append(finding(Misfit.TOO_SHORT, f"it holds {length} characters; the mapping writes up to "
                             f"{need.max_length}", f"make it at least {need.max_length} characters long"))
    if need.external_id:
        found.extend(_external_id_findings(finding, described))
    if need.kind is FieldKind.LOOKUP:
        found.extend(_lookup_findings(finding, need, described))
    return found


def _external_id_findings(finding, described: dict) -> list[Finding]:
    found = []
    if not described.get("externalId"):
        found.append(finding(Misfit.NOT_EXTERNAL_ID, "it is not marked External ID, so records cannot be upserted "
                             "or looked up by it", "tick External ID on the field"))
    if not described.get("unique"):
        found.append(finding(Misfit.NOT_UNIQUE, "it is not marked Unique, so two records may share a key and "
                             "upserts by it fail", "tick Unique on the field"))
    return found


def _lookup_findings(finding, need: FieldNeed, described: dict) -> list[Finding]:
    found = []
    targets = [t.lower() for t in described.get("referenceTo") or ()]
    if need.target.lower() not in targets:
        found.append(finding(Misfit.WRONG_LOOKUP, f"it looks up {', '.join(described.get('referenceTo') or ()) or 'nothing'}"
                             f", not {need.target}", f"make it a lookup to {need.target}"))
    # The describe names a custom relationship with its __r (Salesforce's Field.relationshipName).
    if (described.get("relationshipName") or "").lower() != need.relationship_name.lower():
        found.append(finding(Misfit.WRONG_LOOKUP, f"its relationship name is {described.get('relationshipName')}, "
                             f"the mapping uses {need.relationship_name}",
                             f"look up {need.target} from a field named {need.relationship_name[: -len('__r')]} "
                             f"(its relationship is the field's name with __r; the child relationship name "
                             f"on {need.target} is another name, free to choose)"))
    # The parent's key (need.target_external_id) is in the contract as an external id of the
    # parent object, so a key that is missing or not an External ID is told once, on the key.
    return found


def _unfilled(need: ObjectNeed, described: Any) -> list[Finding]:
    """Fields the org requires on create (not nillable, createable, no default) that the mapping
    never fills: every record it sends would be refused (REQUIRED_FIELD_MISSING)."""
    found = []
    for field in described:
        required = field.get("createable") and not field.get("nillable") and not field.get("defaultedOnCreate")
        if required and field.get("type") != "boolean" and need.field(field.get("name", "")) is None:
            found.append(Finding(need.name, field.get("name"), Misfit.REQUIRED_UNFILLED,
                                 "the org requires it on every new record and the mapping never fills it",
                                 "add it to the mapping's fields:, or make it optional (or give it a default)",
                                 need.source))
    return found


def _field_fix(obj: ObjectNeed, need: FieldNeed) -> str:
    what = _CREATE_AS[need.kind]
    if need.kind is FieldKind.LOOKUP:
        what = (f"Lookup Relationship to {need.target} (field name {need.relationship_name[: -len('__r')]}; "
                f"any child relationship name)")
    elif need.external_id:
        what = "Text (255), External ID and Unique"
    elif need.kind in (FieldKind.TEXT, FieldKind.ANY):
        what = f"Text ({max(need.max_length or 0, 255)})"
    elif need.precision is not None:
        what = f"Number (length {need.precision - need.scale}, {need.scale} decimal places) or Currency"
    return f"create {need.name} on {obj.name} as {what}, editable by the integration user"


def _sends(need: FieldNeed) -> str:
    return {FieldKind.TEXT: "text", FieldKind.NUMBER: "a decimal number", FieldKind.INTEGER: "a whole number",
            FieldKind.CHECKBOX: "true/false", FieldKind.DATETIME: "a date and time",
            FieldKind.ANY: "plain values", FieldKind.LOOKUP: "a parent record"}[need.kind]
