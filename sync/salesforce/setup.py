"""What ``crm setup`` builds in the org: the custom objects, fields and the ``Partnero_Sync``
permission set the contract needs and the org lacks (from ``fit.findings``). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sync.salesforce.contract import Contract, FieldKind, FieldNeed
from sync.salesforce.fit import Finding, Misfit, findings

PERMISSION_SET = "Partnero_Sync"
PERMISSION_SET_LABEL = "Partnero Sync"
#: A text field's length when the mapping cannot say how long its values are.
TEXT_LENGTH = 255
#: Metadata API CustomField type for each kind (FieldType enum of metadata.wsdl).
_TYPES = {FieldKind.TEXT: "Text", FieldKind.ANY: "Text", FieldKind.NUMBER: "Number",
          FieldKind.INTEGER: "Number", FieldKind.CHECKBOX: "Checkbox", FieldKind.DATETIME: "DateTime",
          FieldKind.LOOKUP: "Lookup"}


@dataclass(frozen=True)
class NewObject:
    """A custom object to create (its Name field a Text, sharing Read/Write, deployed)."""

    name: str
    label: str
    plural_label: str


@dataclass(frozen=True)
class NewField:
    """A custom field to create, in the Metadata API's terms."""

    object: str
    name: str
    type: str
    label: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    external_id: bool = False
    unique: bool = False
    default_value: str | None = None
    reference_to: str | None = None
    #: The child relationship's name on the target (unique there); the API adds __r.
    relationship_name: str | None = None
    relationship_label: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.object}.{self.name}"


@dataclass(frozen=True)
class PermissionSetPlan:
    """``Partnero_Sync``: read, create and edit on each object, edit on each custom field."""

    name: str
    label: str
    objects: tuple[str, ...]
    fields: tuple[str, ...]  # full names, Object.Field__c


@dataclass(frozen=True)
class Plan:
    """What to create, parents first; and what the org has wrong that setup never changes."""

    objects: tuple[NewObject, ...]
    fields: tuple[NewField, ...]
    permission_set: PermissionSetPlan | None
    left: tuple[Finding, ...]

    @property
    def empty(self) -> bool:
        return not self.objects and not self.fields and self.permission_set is None


def plan(contract: Contract, describes: Mapping[str, dict | None], hidden: Mapping[str, dict] | None = None) -> Plan:
    """The plan for an org whose objects are ``describes`` (None: absent), from ``contract``.

    ``hidden`` holds custom fields the org has but the integration user cannot see (their
    Metadata API CustomField by full name, ``Object.Field__c``): they are granted, never created
    again; one of the wrong type is left and reported."""
    objects: list[NewObject] = []
    fields: list[NewField] = []
    left: list[Finding] = []
    grant = bool(hidden)
    for found in findings(contract, with_hidden(describes, hidden or {})):
        custom_field = found.field is not None and found.field.endswith("__c")
        if found.problem is Misfit.OBJECT_MISSING and found.object.endswith("__c"):
            objects.append(new_object(found.object))
        elif found.problem is Misfit.FIELD_MISSING and custom_field and _creatable(found.object, describes):
            fields.append(new_field(found.object, contract.object(found.object).field(found.field)))
        elif found.problem is Misfit.NOT_WRITABLE and custom_field:
            grant = True
        else:
            left.append(found)
    permission_set = None
    if objects or fields or grant:
        permission_set = _permission_set(contract, describes, {o.name for o in objects})
    return Plan(tuple(objects), tuple(fields), permission_set, tuple(left))


#: Metadata API field type -> the sObject Describe's type (SOAP API Developer Guide, fieldType).
_DESCRIBE_TYPES = {"Text": "string", "Number": "double", "Checkbox": "boolean", "Date": "date",
                   "DateTime": "datetime", "Lookup": "reference", "MasterDetail": "reference",
                   "Currency": "currency", "Percent": "percent", "Email": "email", "Phone": "phone",
                   "Url": "url", "TextArea": "textarea", "LongTextArea": "textarea", "Picklist": "picklist"}


def with_hidden(describes: Mapping[str, dict | None], hidden: Mapping[str, dict]) -> dict[str, dict | None]:
    """``describes`` with each hidden field added as the describe would show it once readable
    (not yet createable or updateable), so the fit is judged on what the org really has."""
    out = dict(describes)
    for full_name, record in hidden.items():
        obj, _, name = full_name.partition(".")
        described = out.get(obj)
        if described is None:
            continue
        kind = _DESCRIBE_TYPES.get(str(record.get("type")), str(record.get("type")).lower())
        reference = record.get("referenceTo")
        out[obj] = {**described, "fields": [*described.get("fields", []), {
            "name": name, "type": kind, "length": int(record.get("length") or 0), "createable": False,
            "updateable": False, "nillable": True, "externalId": bool(record.get("externalId")),
            "unique": bool(record.get("unique")), "referenceTo": [reference] if reference else [],
            "relationshipName": name[:-3] + "__r" if reference else None}]}
    return out


def _creatable(obj: str, describes: Mapping[str, dict | None]) -> bool:
    return describes.get(obj) is not None or obj.endswith("__c")


def new_object(name: str) -> NewObject:
    label = _label(name)
    return NewObject(name, label, label + "s")


def new_field(obj: str, need: FieldNeed) -> NewField:
    """The CustomField that takes what ``need`` says the mapping sends."""
    label = _label(need.name)
    kind = _TYPES[need.kind]
    if need.kind is FieldKind.LOOKUP:
        child = f"{_base(obj)}_{_base(need.name)}"[:40].rstrip("_")
        return NewField(obj, need.name, kind, label, reference_to=need.target, relationship_name=child,
                        relationship_label=f"{_label(obj)} ({label})")
    if need.external_id:
        return NewField(obj, need.name, "Text", label, length=TEXT_LENGTH, external_id=True, unique=True)
    if kind == "Text":
        return NewField(obj, need.name, kind, label, length=max(need.max_length or 0, TEXT_LENGTH))
    if kind == "Number":
        integer = need.kind is FieldKind.INTEGER
        return NewField(obj, need.name, kind, label, precision=18 if integer else need.precision,
                        scale=0 if integer else need.scale)
    if kind == "Checkbox":
        return NewField(obj, need.name, kind, label, default_value="false")
    return NewField(obj, need.name, kind, label)


def _permission_set(contract: Contract, describes: Mapping[str, dict | None], created: set[str]) -> PermissionSetPlan:
    present = [o for o in contract.objects if describes.get(o.name) is not None or o.name in created]
    fields = [f"{o.name}.{f.name}" for o in present for f in o.fields if f.name.endswith("__c")]
    return PermissionSetPlan(PERMISSION_SET, PERMISSION_SET_LABEL, tuple(o.name for o in present), tuple(fields))


def _base(api_name: str) -> str:
    return api_name[:-3] if api_name.endswith("__c") else api_name


def _label(api_name: str) -> str:
    return _base(api_name).replace("_", " ").strip()


def describe_plan(p: Plan) -> list[str]:
    """The plan in lines an admin reads (``crm setup --dry-run``)."""
    if p.empty:
        lines = ["nothing to create: the org has every object and field the mappings need"]
    else:
        lines = [f"create object {o.name} (label {o.label!r}, plural {o.plural_label!r}, Name field Text, "
                 "sharing Read/Write, Deployed)" for o in p.objects]
        lines += [f"create field {f.full_name}: {field_summary(f)}" for f in p.fields]
    if p.permission_set is not None:
        ps = p.permission_set
        lines.append(f"upsert permission set {ps.name}: Read, Create, Edit on {', '.join(ps.objects)}; Edit on "
                     f"{len(ps.fields)} fields; assign it to the logged-in user")
        lines += [f"  grant edit {name}" for name in ps.fields]
    lines += [f"left alone, change it yourself: {f.object}.{f.field or '-'}: {f.problem}: {f.detail} ({f.fix})"
              for f in p.left]
    return lines


def field_summary(f: NewField) -> str:
    parts = [f.type]
    if f.length is not None:
        parts.append(f"length {f.length}")
    if f.precision is not None:
        parts.append(f"precision {f.precision}, scale {f.scale}")
    if f.external_id:
        parts.append("External ID")
    if f.unique:
        parts.append("Unique")
    if f.default_value is not None:
        parts.append(f"default {f.default_value}")
    if f.reference_to is not None:
        parts.append(f"lookup to {f.reference_to}, child relationship name {f.relationship_name}")
    return ", ".join(parts)


def object_component(o: NewObject) -> dict:
    """A CustomObject as the Metadata API's element names hold it."""
    return {"fullName": o.name, "label": o.label, "pluralLabel": o.plural_label,
            "nameField": {"label": f"{o.label} Name", "type": "Text"},
            "deploymentStatus": "Deployed", "sharingModel": "ReadWrite"}


def field_component(f: NewField) -> dict:
    """A CustomField as the Metadata API's element names hold it (unset attributes left out)."""
    values = {"fullName": f.full_name, "label": f.label, "type": f.type, "length": f.length,
              "precision": f.precision, "scale": f.scale, "defaultValue": f.default_value,
              "referenceTo": f.reference_to, "relationshipName": f.relationship_name,
              "relationshipLabel": f.relationship_label,
              "deleteConstraint": "SetNull" if f.type == "Lookup" else None,
              "externalId": True if f.external_id else None, "unique": True if f.unique else None}
    return {key: value for key, value in values.items() if value is not None}


def permission_set_component(ps: PermissionSetPlan) -> dict:
    """A PermissionSet granting read/create/edit on the objects and edit on the fields."""
    return {"fullName": ps.name, "label": ps.label,
            "objectPermissions": [{"object": name, "allowRead": True, "allowCreate": True, "allowEdit": True,
                                   "allowDelete": False, "viewAllRecords": False, "modifyAllRecords": False}
                                  for name in ps.objects],
            "fieldPermissions": [{"field": name, "readable": True, "editable": True} for name in ps.fields]}


def components(p: Plan) -> list[tuple[str, list[dict]]]:
    """The plan as Metadata API components by type, parents first: objects, fields, permission set."""
    out = [("CustomObject", [object_component(o) for o in p.objects]),
           ("CustomField", [field_component(f) for f in p.fields])]
    if p.permission_set is not None:
        out.append(("PermissionSet", [permission_set_component(p.permission_set)]))
    return [(kind, items) for kind, items in out if items]


#: A describe type that takes each kind (for standard fields assumed present).
_PRESENT = {FieldKind.TEXT: "string", FieldKind.ANY: "string", FieldKind.NUMBER: "double",
            FieldKind.INTEGER: "int", FieldKind.CHECKBOX: "boolean", FieldKind.DATETIME: "datetime",
            FieldKind.LOOKUP: "reference"}


def fresh_describes(contract: Contract) -> dict[str, dict | None]:
    """The describes of an org with nothing of ours (for a package written without a login): no
    custom object, and standard objects with only their standard fields, as the mappings need them."""
    return {o.name: None if o.custom else {"name": o.name, "fields": [_standard(f) for f in o.fields
                                                                      if not f.name.endswith("__c")]}
            for o in contract.objects}


def _standard(need: FieldNeed) -> dict:
    return {"name": need.name, "type": _PRESENT[need.kind], "length": max(need.max_length or 0, TEXT_LENGTH),
            "createable": True, "updateable": True, "nillable": True, "externalId": need.external_id,
            "unique": need.external_id, "referenceTo": [need.target] if need.target else [],
            "relationshipName": need.relationship_name}
