"""The plan of ``crm setup`` as a Salesforce DX source package: ``sfdx-project.json`` and the
Metadata API XML of each object, field and the permission set under ``force-app/main/default``. Pure."""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape

from sync.salesforce.setup import Plan, components

MD_NS = "http://soap.sforce.com/2006/04/metadata"
API_VERSION = "59.0"
ROOT = "force-app/main/default"


def package(plan: Plan) -> dict[str, str]:
    """Each file of the package (its path inside the project) and its text."""
    files = {"sfdx-project.json": json.dumps({
        "packageDirectories": [{"path": "force-app", "default": True}],
        "name": "partnero-sync-org", "namespace": "", "sfdcLoginUrl": "https://login.salesforce.com",
        "sourceApiVersion": API_VERSION}, indent=2) + "\n"}
    for kind, items in components(plan):
        for item in items:
            path, body = _source_file(kind, item)
            files[path] = document(kind, body)
    return files


def _source_file(kind: str, item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where a component lives in source format, and its body without the fullName (the file's
    name carries it)."""
    body = {key: value for key, value in item.items() if key != "fullName"}
    name = item["fullName"]
    if kind == "CustomObject":
        return f"{ROOT}/objects/{name}/{name}.object-meta.xml", body
    if kind == "CustomField":
        obj, _, field = name.partition(".")
        return f"{ROOT}/objects/{obj}/fields/{field}.field-meta.xml", {"fullName": field, **body}
    return f"{ROOT}/permissionsets/{name}.permissionset-meta.xml", body


def document(kind: str, body: dict[str, Any]) -> str:
    """One component as a Metadata API XML document: the type as the root element in the
    metadata namespace, its elements in the schema's order (fullName first, then by name, as
    Salesforce writes retrieved source)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<{kind} xmlns="{MD_NS}">\n{_elements(body, 1)}</{kind}>\n')


def _elements(body: dict[str, Any], depth: int) -> str:
    out = []
    pad = "    " * depth
    for key in sorted(body, key=lambda k: (k != "fullName", k)):
        values = body[key] if isinstance(body[key], list) else [body[key]]
        for value in values:
            if isinstance(value, dict):
                out.append(f"{pad}<{key}>\n{_elements(value, depth + 1)}{pad}</{key}>\n")
            else:
                out.append(f"{pad}<{key}>{escape(_text(value))}</{key}>\n")
    return "".join(out)


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
