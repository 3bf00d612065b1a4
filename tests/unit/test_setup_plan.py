"""What ``crm setup`` would create, from the contract held against an org's describes, and the same
plan as a Salesforce DX source package: pure."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from sync.salesforce.setup import PERMISSION_SET, components, fresh_describes, plan
from sync.salesforce.sfdx import MD_NS, package
from tests.unit.test_org_contract import PAYOUT, SHIPPED, contract_of, field, key, system

NS = {"md": MD_NS}


@pytest.fixture
def payout(tmp_path):
    return contract_of(tmp_path, PAYOUT)


def thing(tmp_path, mapping_type: str):
    """The contract of one object, Thing__c, keyed by Key__c, with Value__c of ``mapping_type``."""
    return contract_of(tmp_path, f"""
        object: Thing__c
        external_id: Key__c
        fields:
          Value__c: {{from: data.value, type: {mapping_type}}}
    """)


def test_a_fresh_org_gets_every_object_field_and_the_permission_set(payout):
    p = plan(payout, fresh_describes(payout))
    assert [o.name for o in p.objects] == ["Program__c", "Payout__c"]
    fields = {f.full_name: f for f in p.fields}
    assert (fields["Payout__c.Payout_Id__c"].type, fields["Payout__c.Payout_Id__c"].length) == ("Text", 255)
    assert fields["Payout__c.Payout_Id__c"].external_id and fields["Payout__c.Payout_Id__c"].unique
    assert (fields["Payout__c.Paid__c"].type, fields["Payout__c.Paid__c"].default_value) == ("Checkbox", "false")
    assert fields["Payout__c.Paid_At__c"].type == "DateTime"
    assert (fields["Payout__c.Count__c"].precision, fields["Payout__c.Count__c"].scale) == (18, 0)
    lookup = fields["Payout__c.Program__c"]
    assert (lookup.type, lookup.reference_to, lookup.relationship_name) == ("Lookup", "Program__c", "Payout_Program")
    assert p.permission_set.objects == ("Program__c", "Payout__c") and len(p.permission_set.fields) == 7
    kinds = [kind for kind, _ in components(p)]
    assert kinds == ["CustomObject", "CustomField", "PermissionSet"]  # parents first


def test_an_org_that_fits_needs_nothing(tmp_path):
    needs = thing(tmp_path, "string")
    describes = {"Thing__c": {"name": "Thing__c", "fields": [*system(), key("Key__c"), field("Value__c")]}}
    assert plan(needs, describes).empty


def test_a_field_the_user_cannot_edit_only_needs_the_permission_set(tmp_path):
    needs = thing(tmp_path, "string")
    describes = {"Thing__c": {"name": "Thing__c", "fields": [
        *system(), key("Key__c"), field("Value__c", createable=False, updateable=False)]}}
    p = plan(needs, describes)
    assert not p.objects and not p.fields and p.permission_set.fields == ("Thing__c.Key__c", "Thing__c.Value__c")


def test_a_field_of_the_wrong_type_is_left_and_never_planned(tmp_path):
    needs = thing(tmp_path, "decimal")
    describes = {"Thing__c": {"name": "Thing__c", "fields": [*system(), key("Key__c"), field("Value__c")]}}
    p = plan(needs, describes)
    assert p.empty and [(f.field, f.problem.value) for f in p.left] == [("Value__c", "wrong type")]


def test_the_sfdx_package_is_metadata_api_xml_with_the_expected_elements(payout):
    files = package(plan(payout, fresh_describes(payout)))
    project = json.loads(files["sfdx-project.json"])
    assert project["packageDirectories"] == [{"path": "force-app", "default": True}]
    root = "force-app/main/default"
    obj = ET.fromstring(files[f"{root}/objects/Payout__c/Payout__c.object-meta.xml"])
    assert obj.tag == f"{{{MD_NS}}}CustomObject"
    assert [e.tag.split("}")[1] for e in obj] == ["deploymentStatus", "label", "nameField", "pluralLabel",
                                                 "sharingModel"]
    assert obj.find("md:nameField/md:type", NS).text == "Text"
    key_field = ET.fromstring(files[f"{root}/objects/Payout__c/fields/Payout_Id__c.field-meta.xml"])
    assert [(e.tag.split("}")[1], e.text) for e in key_field] == [
        ("fullName", "Payout_Id__c"), ("externalId", "true"), ("label", "Payout Id"), ("length", "255"),
        ("type", "Text"), ("unique", "true")]
    lookup = ET.fromstring(files[f"{root}/objects/Payout__c/fields/Program__c.field-meta.xml"])
    assert {e.tag.split("}")[1]: e.text for e in lookup} == {
        "fullName": "Program__c", "deleteConstraint": "SetNull", "label": "Program", "referenceTo": "Program__c",
        "relationshipLabel": "Payout (Program)", "relationshipName": "Payout_Program", "type": "Lookup"}
    permissions = ET.fromstring(files[f"{root}/permissionsets/{PERMISSION_SET}.permissionset-meta.xml"])
    assert permissions.find("md:label", NS).text == "Partnero Sync"
    grants = permissions.findall("md:fieldPermissions", NS)
    assert [e.tag.split("}")[1] for e in grants[0]] == ["editable", "field", "readable"]
    assert {g.find("md:field", NS).text for g in grants} >= {"Payout__c.Paid__c", "Program__c.Program_Key__c"}
    access = permissions.find("md:objectPermissions", NS)
    assert [e.tag.split("}")[1] for e in access] == ["allowCreate", "allowDelete", "allowEdit", "allowRead",
                                                    "modifyAllRecords", "object", "viewAllRecords"]


def test_the_shipped_mappings_package_holds_every_file(tmp_path):
    from sync.mapping import load_mappings
    from sync.salesforce.contract import contract
    from sync.store.schema import RESERVED_TABLES

    needs = contract(load_mappings(SHIPPED, RESERVED_TABLES))
    files = package(plan(needs, fresh_describes(needs)))
    assert len([f for f in files if f.endswith(".field-meta.xml")]) == 19
    assert "force-app/main/default/objects/Contact/Contact.object-meta.xml" not in files  # standard: fields only
    for text in files.values():
        if text.startswith("<?xml"):
            ET.fromstring(text)
