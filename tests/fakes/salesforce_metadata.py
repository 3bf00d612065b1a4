"""The stand-in's Metadata API: the SOAP CRUD calls simple-salesforce's ``mdapi`` makes.

``FakeSalesforce.metadata`` (a :class:`MetadataApi`) answers ``/services/Soap/m/{version}/...``
(the ``metadataServerUrl`` of the SOAP login; simple-salesforce posts to ``.../Soap/m/{version}/``)
for ``createMetadata``, ``updateMetadata``, ``upsertMetadata``, ``readMetadata`` and
``deleteMetadata`` of ``CustomObject``, ``CustomField`` and ``PermissionSet``. What it creates
shows in the rest of the stand-in: a custom object becomes an sObject, a field a column of its
object, with its type, length, flags and lookup in the REST describe; a ``PermissionSet`` becomes
a ``PermissionSet`` record (query it by ``Name``) that a REST create of a
``PermissionSetAssignment`` (``AssigneeId``, ``PermissionSetId``) gives to the integration user.

Field-level security as Salesforce applies it to fields made through the Metadata API: nobody
may see such a field until a permission set (or profile) grants it, so a new field is absent
from the user's describe and refused in writes (INVALID_FIELD, as for a field the object lacks)
until an assigned permission set has ``readable`` (describe shows it, not createable/updateable)
or ``editable`` for it. Required fields take no field permissions and are always editable.

Test switches: ``modify_metadata = False`` makes the user one without "Modify Metadata Through
Metadata API Functions" / "Modify All Data": every call is the INSUFFICIENT_ACCESS fault.
``components(type)`` shows what is stored. Shapes and their sources are cited next to each.

Answers: SaveResult (create, update), UpsertResult (upsert: ``created``), DeleteResult, each with
``errors`` (``statusCode``, ``message``, ``fields``) when ``success`` is false; one component's
failure does not stop the others (no AllOrNoneHeader, API 34.0 and later). Faults (HTTP 500):
INVALID_SESSION_ID, INSUFFICIENT_ACCESS, EXCEEDED_ID_LIMIT (more than 10 components).
Not modelled: deploy/checkDeployStatus, retrieve, listMetadata, renameMetadata, describeMetadata,
object permissions (recorded in the permission set, not enforced), fields made by
``define_object`` (readMetadata does not list them). ``FakeSalesforce.reset()`` keeps the
components but forgets the ``PermissionSet`` and assignment records, and so the grants.
"""

from __future__ import annotations

import copy
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable
from xml.sax.saxutils import escape as xml_escape

__all__ = ["MAX_COMPONENTS", "METADATA_PATH", "MetadataApi", "MetadataReply"]

MD_NS = "http://soap.sforce.com/2006/04/metadata"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
METADATA_PATH = re.compile(r"^/services/Soap/m/(\d+\.\d+)(?:/.*)?$")
TYPES = ("CustomObject", "CustomField", "PermissionSet")
#: Children that repeat (lists) in the three types (metadata.wsdl: maxOccurs="unbounded").
_REPEATED = {"fields", "fieldPermissions", "objectPermissions"}
#: Metadata field type -> REST describe ``type`` (SOAP API Developer Guide, "Field" /
#: fieldType: string, double, boolean, date, datetime, reference, currency, percent, ...).
_DESCRIBE_TYPE = {"Text": "string", "Number": "double", "Checkbox": "boolean", "Date": "date",
                  "DateTime": "datetime", "Lookup": "reference", "Currency": "currency",
                  "Percent": "percent", "Email": "email", "Phone": "phone", "Url": "url",
                  "TextArea": "textarea", "LongTextArea": "textarea", "Picklist": "picklist"}
#: Describe type -> the JSON reader type of ``ObjectSpec.types`` in tests/fakes/salesforce.py.
_JSON_TYPE = {"double": "double", "currency": "double", "percent": "double",
              "boolean": "boolean", "date": "date", "datetime": "datetime"}
_NUMERIC = ("Number", "Currency", "Percent")
_LENGTHED = ("Text", "LongTextArea")
# The fault strings recorded from Salesforce: forcedotcom/cli#3048 and
# pgonzaleznetwork/sfdc-soup#8 (HTTP 500, faultcode sf:INSUFFICIENT_ACCESS);
# forcedotcom/postman-salesforce-apis#56 and forcedotcom/wsc#56 (sf:INVALID_SESSION_ID).
_NO_ACCESS = ("INSUFFICIENT_ACCESS", "INSUFFICIENT_ACCESS: use of the Metadata API requires a "
              "user with the ModifyAllData or ModifyMetadata permissions")
# certinia/apex-mdapi#105: "SOAP Fault: EXCEEDED_ID_LIMIT: record limit reached. cannot submit
# more than 10 records in this operation" (the CRUD calls take at most 10 components).
MAX_COMPONENTS = 10
_TOO_MANY = ("EXCEEDED_ID_LIMIT", "EXCEEDED_ID_LIMIT: record limit reached. cannot submit more than "
             f"{MAX_COMPONENTS} records in this operation")
_BAD_SESSION = ("INVALID_SESSION_ID", "INVALID_SESSION_ID: Invalid Session ID found in "
                "SessionHeader: Illegal Session")


class MetadataError(Exception):
    """One component's failure: an ``Error`` in its SaveResult/UpsertResult/DeleteResult."""

    def __init__(self, code: str, message: str, fields: tuple[str, ...] = ()):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fields = code, message, fields


@dataclass
class MetadataReply:
    """What the HTTP layer sends: status, SOAP body, and the log's detail."""

    status: int
    body: bytes
    detail: str


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(body: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _read_element(element: ET.Element) -> Any:
    """An XML element as text, or as a dict of its children (repeated ones as lists)."""
    children = list(element)
    if not children:
        return element.text or ""
    out: dict[str, Any] = {}
    for child in children:
        name, value = _local(child.tag), _read_element(child)
        if name in _REPEATED or name in out:
            previous = out.get(name, [])
            out[name] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            out[name] = value
    return out


def _write_value(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_write_value(name, item) for item in value)
    if isinstance(value, dict):
        inner = "".join(_write_value(key, item) for key, item in value.items())
        return f"<{name}>{inner}</{name}>"
    return f"<{name}>{xml_escape(str(value))}</{name}>"


def _envelope(inner: str) -> bytes:
    # The response envelope of the Metadata API (metadata.wsdl, document/literal, tns = MD_NS).
    return ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            f'xmlns:soapenv="{SOAP_NS}" xmlns="{MD_NS}" xmlns:xsi="{XSI_NS}">'
            f'<soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>').encode()


def _fault(code: str, message: str) -> MetadataReply:
    body = _envelope(f'<soapenv:Fault xmlns:sf="{MD_NS}"><faultcode>sf:{code}</faultcode>'
                     f'<faultstring>{xml_escape(message)}</faultstring></soapenv:Fault>')
    return MetadataReply(500, body, code)


def _result(full_name: str, error: MetadataError | None, created: bool | None) -> str:
    """SaveResult / UpsertResult / DeleteResult (metadata.wsdl: errors*, fullName, success;
    UpsertResult adds created; Error: fields*, message, statusCode)."""
    parts = [] if created is None else [f"<created>{str(created).lower()}</created>"]
    if error is not None:
        fields = "".join(f"<fields>{xml_escape(f)}</fields>" for f in error.fields)
        parts.append(f"<errors>{fields}<message>{xml_escape(error.message)}</message>"
                     f"<statusCode>{error.code}</statusCode></errors>")
    parts.append(f"<fullName>{xml_escape(full_name)}</fullName>"
                 f"<success>{str(error is None).lower()}</success>")
    return f"<result>{''.join(parts)}</result>"


def _flag(value: Any) -> bool:
    return str(value).lower() == "true"


def _not_found(kind: str, full_name: str) -> MetadataError:
    # Recorded: simple-salesforce/simple-salesforce#602, an updateMetadata of a missing field:
    # "(INVALID_CROSS_REFERENCE_KEY, In field: fullName - no CustomField named X found)".
    return MetadataError("INVALID_CROSS_REFERENCE_KEY",
                         f"In field: fullName - no {kind} named {full_name} found")


def _field_problem(record: dict) -> MetadataError | None:
    """What Salesforce refuses in a CustomField definition. The message pattern is the one
    its deploys print: "Must specify 'defaultValue' for a CustomField of type Checkbox",
    "Can not specify 'length' for a CustomField of type TextArea"; the statusCode of such
    a SaveResult is FIELD_INTEGRITY_EXCEPTION (certinia/apex-mdapi#219)."""
    kind = record.get("type", "")
    if kind not in _DESCRIBE_TYPE:  # the code as above; this message is the fake's own
        return MetadataError("FIELD_INTEGRITY_EXCEPTION", f"Invalid type: {kind or '(none)'}", ("type",))
    needed = {"Text": ("length",), "LongTextArea": ("length", "visibleLines"),
              "Checkbox": ("defaultValue",), "Lookup": ("referenceTo", "relationshipName"),
              **{numeric: ("precision",) for numeric in _NUMERIC}}.get(kind, ())
    for name in needed:
        if record.get(name) in (None, ""):
            return MetadataError("FIELD_INTEGRITY_EXCEPTION",
                                 f"Must specify '{name}' for a CustomField of type {kind}", (name,))
    refused = [name for name, allowed in (("length", _LENGTHED), ("precision", _NUMERIC),
                                          ("scale", _NUMERIC), ("referenceTo", ("Lookup",)))
               if record.get(name) not in (None, "") and kind not in allowed]
    if refused:
        return MetadataError("FIELD_INTEGRITY_EXCEPTION",
                             f"Can not specify '{refused[0]}' for a CustomField of type {kind}",
                             (refused[0],))
    return None


class MetadataApi:
    """The org's metadata components and the SOAP calls on them (see the module doc)."""

    def __init__(self, org: Any):
        self._org = org  # the FakeSalesforce: its lock, tokens, schema and records
        self._lock: threading.RLock = org._lock
        self._components: dict[str, dict[str, dict]] = {kind: {} for kind in TYPES}
        self.modify_metadata = True
        org.define_object("PermissionSet", prefix="0PS", required=("Name", "Label"))
        org.define_object("PermissionSetAssignment", prefix="0Pa",
                          required=("AssigneeId", "PermissionSetId"))

    # ------------------------------------------------------------ inspection

    def components(self, kind: str) -> dict[str, dict]:
        """The stored components of one type, by fullName."""
        with self._lock:
            return {record["fullName"]: copy.deepcopy(record)
                    for record in self._components[kind].values()}

    # ------------------------------------------------------------ SOAP

    def serve(self, body: bytes) -> MetadataReply:
        """Answer one SOAP request to the Metadata API endpoint."""
        envelope = _parse(body)
        if envelope is None:  # not recorded from Salesforce: a request the fake cannot read
            return _fault("INVALID_REQUEST", "The request body is not XML")
        session = envelope.findtext(f".//{{{MD_NS}}}SessionHeader/{{{MD_NS}}}sessionId")
        call = envelope.find(f"{{{SOAP_NS}}}Body/*")
        with self._lock:
            if session is None or session.strip() not in self._org._tokens:
                return _fault(*_BAD_SESSION)
            if not self.modify_metadata:
                return _fault(*_NO_ACCESS)
            operation = _local(call.tag) if call is not None else ""
            handler = self._operations().get(operation)
            if handler is None:  # not recorded: deploy, retrieve, listMetadata... are not modelled
                return _fault("INVALID_OPERATION", f"No operation available for request {operation}")
            if len([c for c in call if _local(c.tag) in ("metadata", "fullNames")]) > MAX_COMPONENTS:
                return _fault(*_TOO_MANY)
            results, detail = handler(call)
        inner = f"<{operation}Response>{''.join(results)}</{operation}Response>"
        return MetadataReply(200, _envelope(inner), f"{operation}{detail}")

    def _operations(self) -> dict[str, Callable[[ET.Element], tuple[list[str], str]]]:
        return {"createMetadata": lambda call: self._save_all(call, "create"),
                "updateMetadata": lambda call: self._save_all(call, "update"),
                "upsertMetadata": lambda call: self._save_all(call, "upsert"),
                "readMetadata": self._read_all, "deleteMetadata": self._delete_all}

    def _save_all(self, call: ET.Element, mode: str) -> tuple[list[str], str]:
        results, codes = [], []
        for element in call.findall(f"{{{MD_NS}}}metadata"):
            kind = _local(element.get(f"{{{XSI_NS}}}type", "")).split(":")[-1]
            record = _read_element(element)
            record = record if isinstance(record, dict) else {}
            full_name = str(record.get("fullName", ""))
            error, created = None, None
            try:
                created = self._save(kind, record, mode)
            except MetadataError as exc:
                error, created = exc, False
                codes.append(exc.code)
            results.append(_result(full_name, error, created if mode == "upsert" else None))
        return results, "".join(f":{code}" for code in codes)

    def _read_all(self, call: ET.Element) -> tuple[list[str], str]:
        kind = call.findtext(f"{{{MD_NS}}}type", "")
        records = []
        for name in [e.text or "" for e in call.findall(f"{{{MD_NS}}}fullNames")]:
            found = self._components.get(kind, {}).get(name.lower())
            # A name that does not exist still answers a record, without fullName: readMetadata
            # "doesn't throw an exception. Instead, an empty record is returned" whose FullName
            # is null (certinia/apex-mdapi's README, quoted at qiita.com/Keiji_otsubo/items/
            # 5d75e344af2cad9b8624). ReadResult = records* (metadata.wsdl; Salesforce's
            # "ReadResult" reference page).
            if found is not None and kind == "CustomObject":
                found = {**found, "fields": self._fields_of(found["fullName"])}
            inner = "" if found is None else "".join(_write_value(k, v) for k, v in found.items())
            records.append(f'<records xsi:type="{xml_escape(kind)}">{inner}</records>')
        return [f"<result>{''.join(records)}</result>"], ""

    def _fields_of(self, sobject: str) -> list[dict]:
        """A CustomObject's ``fields`` as readMetadata gives them: fullName without the object."""
        prefix = sobject.lower() + "."
        return [{**record, "fullName": record["fullName"].partition(".")[2]}
                for key, record in self._components["CustomField"].items() if key.startswith(prefix)]

    def _delete_all(self, call: ET.Element) -> tuple[list[str], str]:
        kind = call.findtext(f"{{{MD_NS}}}type", "")
        results, codes = [], []
        for name in [e.text or "" for e in call.findall(f"{{{MD_NS}}}fullNames")]:
            error = None
            if name.lower() not in self._components.get(kind, {}):
                error = _not_found(kind, name)
                codes.append(error.code)
            else:
                self._remove(kind, name)
            results.append(_result(name, error, None))
        return results, "".join(f":{code}" for code in codes)

    # ------------------------------------------------------------ components

    def _save(self, kind: str, record: dict, mode: str) -> bool:
        """Store one component; returns whether it was created."""
        if kind not in TYPES:  # a StatusCode of metadata.wsdl; the message is the fake's own
            raise MetadataError("INVALID_TYPE", f"This fake does not store {kind or '(no type)'}")
        full_name = str(record.get("fullName", ""))
        existing = self._components[kind].get(full_name.lower())
        if mode == "update" and existing is None:
            raise _not_found(kind, full_name)
        if mode == "create" and existing is not None:
            # StatusCode enum value of metadata.wsdl; the message text is not recorded.
            raise MetadataError("DUPLICATE_DEVELOPER_NAME", f"There is already a {kind} named {full_name}")
        {"CustomObject": self._check_object, "CustomField": self._check_field,
         "PermissionSet": self._check_permission_set}[kind](record, existing)
        if kind == "CustomObject":
            self._store_object(record)
        elif kind == "CustomField":
            self._store_field(record)
        else:
            self._store_permission_set(record, existing)
        return existing is None

    def _check_object(self, record: dict, existing: dict | None) -> None:
        if not str(record.get("fullName", "")).endswith("__c"):
            # Recorded in forcedotcom/cli#155 (a deploy of a standard object's file).
            raise MetadataError("FIELD_INTEGRITY_EXCEPTION",
                                "Invalid fullName, must end in a custom suffix ( for ex. __c )", ("fullName",))
        for nested in record.get("fields", []):
            problem = _field_problem(nested) if isinstance(nested, dict) else None
            if problem is not None:
                raise problem

    def _check_field(self, record: dict, existing: dict | None) -> None:
        full_name = str(record.get("fullName", ""))
        obj, _, name = full_name.partition(".")
        if not name.endswith("__c"):
            raise MetadataError("FIELD_INTEGRITY_EXCEPTION",
                                "fullName must end with: __c or __kav", ("fullName",))  # forcedotcom/cli#155
        if self._org._spec(obj) is None:
            raise _not_found("CustomObject", obj)
        problem = _field_problem(record)
        if problem is not None:
            raise problem
        if record.get("type") == "Lookup":
            self._check_lookup(record)
        if existing is not None and existing.get("type") != record.get("type") and self._has_data(obj, name):
            # Recorded: trailheadapps/coral-cloud#87, a deploy over a field holding data.
            raise MetadataError("FIELD_INTEGRITY_EXCEPTION", "Cannot change type due to existing data",
                                ("type",))

    def _check_lookup(self, record: dict) -> None:
        """``relationshipName`` names the child relationship on the target (Account.X__r lists
        the children), so it is unique per target object."""
        target = self._org._spec(str(record.get("referenceTo")))
        if target is None:
            raise _not_found("CustomObject", str(record.get("referenceTo")))
        child = str(record.get("relationshipName")).lower()
        for other in self._components["CustomField"].values():
            if (other.get("type") == "Lookup" and other["fullName"].lower() != str(record["fullName"]).lower()
                    and str(other.get("referenceTo")).lower() == target.name.lower()
                    and str(other.get("relationshipName")).lower() == child):
                # The message recorded in a public `sf project deploy start` failure table (a
                # Supplier__c lookup on Account); the statusCode is that of the other definition
                # errors here.
                raise MetadataError("FIELD_INTEGRITY_EXCEPTION", "There is already a Child Relationship "
                                    f"named {record['relationshipName']} on {target.name}.", ("relationshipName",))

    def _check_permission_set(self, record: dict, existing: dict | None) -> None:
        for grant in record.get("fieldPermissions", []):
            field_name = str(grant.get("field", "")) if isinstance(grant, dict) else ""
            obj, _, name = field_name.partition(".")
            spec = self._org._spec(obj)
            if spec is None or name.lower() not in self._org._canon[spec.name]:
                # The pattern of simple-salesforce#602's message, for the ``field`` element.
                raise MetadataError("INVALID_CROSS_REFERENCE_KEY",
                                    f"In field: field - no CustomField named {field_name} found", ("field",))
        for grant in record.get("objectPermissions", []):
            obj = str(grant.get("object", "")) if isinstance(grant, dict) else ""
            if self._org._spec(obj) is None:
                raise MetadataError("INVALID_CROSS_REFERENCE_KEY",
                                    f"In field: object - no CustomObject named {obj} found", ("object",))

    def _has_data(self, obj: str, name: str) -> bool:
        spec = self._org._spec(obj)
        return any(row.get(name) not in (None, "") for row in self._org._store[spec.name].values())

    def _store_object(self, record: dict) -> None:
        full_name = record["fullName"]
        fields = [f for f in record.pop("fields", []) if isinstance(f, dict)]
        self._components["CustomObject"][full_name.lower()] = record
        if self._org._spec(full_name) is None:
            # A custom object's own columns: Name (its nameField) and the system fields.
            self._org.define_object(full_name, fields=["Name"], external_ids=[])
        for nested in fields:
            self._store_field({**nested, "fullName": f"{full_name}.{nested.get('fullName', '')}"})

    def _store_field(self, record: dict) -> None:
        obj, _, name = record["fullName"].partition(".")
        spec = self._org._spec(obj)
        record["fullName"] = f"{spec.name}.{name}"
        self._components["CustomField"][record["fullName"].lower()] = record
        self._org._canon[spec.name][name.lower()] = name
        if spec.fields is not None:
            spec.fields = spec.fields | {name}
        if spec.external_ids is not None and _flag(record.get("externalId")):
            spec.external_ids = spec.external_ids | {name}
        describe_type = _DESCRIBE_TYPE[record["type"]]
        spec.types.pop(name, None)
        if describe_type in _JSON_TYPE:
            spec.types[name] = _JSON_TYPE[describe_type]
        if record["type"] == "Lookup":  # the parent is reached as Field__r, from the field's name
            self._org.relationships[(spec.name, name[:-3] + "__r")] = (record["referenceTo"], "Id", name)

    def _store_permission_set(self, record: dict, existing: dict | None) -> None:
        """Upsert semantics of permissions: the ones sent replace theirs, others stay."""
        merged = copy.deepcopy(existing) if existing else {}
        for key, value in record.items():
            if key in ("fieldPermissions", "objectPermissions"):
                ident = "field" if key == "fieldPermissions" else "object"
                by_name = {str(g.get(ident)).lower(): g for g in merged.get(key, [])}
                by_name.update({str(g.get(ident)).lower(): g for g in value if isinstance(g, dict)})
                merged[key] = list(by_name.values())
            else:
                merged[key] = value
        name = merged["fullName"]
        self._components["PermissionSet"][name.lower()] = merged
        label = merged.get("label") or name
        found = self._org._lookup(self._org._spec("PermissionSet"), "Name", name)
        if found:
            self._org._store["PermissionSet"][found[0]]["Label"] = label
        else:
            self._org.add("PermissionSet", {"Name": name, "Label": label})

    def _remove(self, kind: str, full_name: str) -> None:
        record = self._components[kind].pop(full_name.lower())
        if kind == "CustomField":
            obj, _, name = record["fullName"].partition(".")
            spec = self._org._spec(obj)
            if spec is not None and spec.fields is not None:
                spec.fields = spec.fields - {name}
            if spec is not None:
                spec.types.pop(name, None)
        elif kind == "PermissionSet":
            for rid in self._org._lookup(self._org._spec("PermissionSet"), "Name", record["fullName"]):
                self._org._put(self._org._spec("PermissionSet"), rid, None, [])

    # ------------------------------------------------------------ field-level security

    def access(self, sobject: str, field_name: str) -> str | None:
        """``"edit"``, ``"read"`` or ``None`` (invisible) for the integration user. Fields
        not made through the Metadata API are ``"edit"``: their security is not modelled here."""
        with self._lock:
            record = self._components["CustomField"].get(f"{sobject}.{field_name}".lower())
            if record is None or _flag(record.get("required")):
                return "edit"
            best = None
            for grant in self._granted_fields().get(record["fullName"].lower(), []):
                if _flag(grant.get("editable")):
                    return "edit"
                if _flag(grant.get("readable")):
                    best = "read"
            return best

    def _granted_fields(self) -> dict[str, list[dict]]:
        org = self._org
        names = set()
        for row in org._store["PermissionSetAssignment"].values():
            if row.get("AssigneeId") in (org.user_id, org.user_id[:15]):
                found = org._by_id(row.get("PermissionSetId"))
                if found is not None and found[0].name == "PermissionSet":
                    names.add(str(found[1].get("Name", "")).lower())
        grants: dict[str, list[dict]] = {}
        for name in names:
            for grant in self._components["PermissionSet"].get(name, {}).get("fieldPermissions", []):
                grants.setdefault(str(grant.get("field", "")).lower(), []).append(grant)
        return grants

    def describe(self, sobject: str, fields: list[dict]) -> list[dict]:
        """The describe handler's field list as this user sees it: invisible fields dropped,
        fields made through the Metadata API with their type, length and flags."""
        out = []
        for entry in fields:
            level = self.access(sobject, entry["name"])
            if level is None:
                continue
            with self._lock:
                record = self._components["CustomField"].get(f"{sobject}.{entry['name']}".lower())
            out.append(entry if record is None else {**entry, **_describe_attributes(record, level)})
        return out


def _describe_attributes(record: dict, level: str) -> dict:
    """REST describe attributes of a field (SOAP API Developer Guide, DescribeSObjectResult
    "Field": type, length, precision, scale, externalId, unique, createable, updateable,
    nillable, referenceTo, relationshipName, custom)."""
    kind = record["type"]
    lookup = kind == "Lookup"
    return {"type": _DESCRIBE_TYPE[kind], "label": record.get("label", ""), "custom": True,
            "length": int(record.get("length") or 0) if kind in _LENGTHED else 0,
            "precision": int(record.get("precision") or 0) if kind in _NUMERIC else 0,
            "scale": int(record.get("scale") or 0) if kind in _NUMERIC else 0,
            "externalId": _flag(record.get("externalId")), "unique": _flag(record.get("unique")),
            "createable": level == "edit", "updateable": level == "edit",
            "nillable": kind != "Checkbox" and not _flag(record.get("required")),
            "referenceTo": [record["referenceTo"]] if lookup else [],
            "relationshipName": record["fullName"].partition(".")[2][:-3] + "__r" if lookup else None}
