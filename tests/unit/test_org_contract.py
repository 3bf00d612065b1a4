"""The contract the mappings make with a Salesforce org, and how an org's describe fits it: pure."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest

from sync.mapping import load_mappings
from sync.salesforce.contract import FieldKind, contract
from sync.salesforce.fit import Misfit, findings
from sync.store.schema import RESERVED_TABLES

SHIPPED = Path(__file__).resolve().parents[2] / "mappings"


def field(name: str, kind: str = "string", **attributes) -> dict:
    """A field as the sObject Describe lists it (REST API Developer Guide, "sObject Describe"; the
    attributes are the SOAP API's DescribeSObjectResult Field's): a custom field an admin made."""
    text = kind in ("string", "textarea", "email", "url", "phone", "picklist")
    described = {"name": name, "label": name, "type": kind, "length": 255 if text else 0,
                 "byteLength": 765 if text else 0, "precision": 0, "scale": 0, "digits": 0,
                 "externalId": False, "unique": False, "idLookup": False, "createable": True,
                 "updateable": True, "nillable": True, "defaultedOnCreate": False, "custom": name.endswith("__c"),
                 "calculated": False, "nameField": False, "caseSensitive": False, "referenceTo": [],
                 "relationshipName": None, "soapType": f"xsd:{kind}"}
    described.update(attributes)
    return described


def key(name: str) -> dict:
    return field(name, externalId=True, unique=True, idLookup=True)


def lookup(name: str, target: str) -> dict:
    return field(name, "reference", length=18, referenceTo=[target], relationshipName=name[:-3] + "__r")


def money(name: str) -> dict:
    return field(name, "currency", precision=18, scale=2)


def system() -> list[dict]:
    """What every object has and the API does not fill: Id, the owner, the audit fields."""
    fixed = {"createable": False, "updateable": False, "nillable": False, "defaultedOnCreate": True}
    return [field("Id", "id", length=18, **fixed), field("CreatedDate", "datetime", **fixed),
            field("OwnerId", "reference", length=18, nillable=False, defaultedOnCreate=True, referenceTo=["User"],
                  relationshipName="Owner"), field("IsDeleted", "boolean", **fixed)]


def org() -> dict[str, dict]:
    """Describes of an org set up for the shipped mappings."""
    contact = [*system(), field("LastName", length=80, nillable=False), field("FirstName", length=40),
               field("Email", "email", length=80), key("Partnero_Partner_Id__c"), field("Partnero_Status__c"),
               field("Partnero_Program__c", length=40), money("Partnero_Commission_Total__c"),
               money("Partnero_Commission_Approved__c"),
               money("Partnero_Commission_Pending__c")]
    account = [*system(), field("Name", nillable=False), key("Partnero_Customer_Key__c"), field("Partnero_Email__c", "email"),
               field("Partnero_Status__c"), field("Partnero_Program__c", length=40),
               lookup("Partnero_Partner__c", "Contact")]
    sale = [*system(), field("Name", length=80, defaultedOnCreate=True), key("Partnero_Transaction_Key__c"),
            money("Amount__c"), field("Currency__c", length=3), field("Action__c"), field("Status__c", "picklist"),
            field("Partnero_Program__c", length=40), lookup("Partnero_Customer__c", "Account"),
            lookup("Partnero_Partner__c", "Contact")]
    return {name: {"name": name, "custom": name.endswith("__c"), "fields": fields}
            for name, fields in (("Contact", contact), ("Account", account), ("Partnero_Transaction__c", sale))}


#: A user's own mapping: a new object, fields of each kind, a lookup to another new object.
PAYOUT = """
        object: Payout__c
        external_id: Payout_Id__c
        fields:
          Paid__c: {from: data.paid, type: boolean}
          Paid_At__c: {from: data.paid_at, type: datetime}
          Count__c: {from: data.count, type: integer}
          Kind__c: {value: manual}
        references:
          Program__r: {object: Program__c, external_id: Program_Key__c, from: data.program}
    """


def contract_of(tmp_path: Path, salesforce: str):
    """The contract of one mapping file whose ``salesforce:`` section is ``salesforce`` (YAML)."""
    (tmp_path / "thing.yml").write_text(textwrap.dedent("""
        entity: thing
        events: [thing.created]
        identity: data.id
        warehouse: {table: things, key: thing_id, columns: {a: data.a}}
        salesforce:
    """) + textwrap.indent(textwrap.dedent(salesforce), "  "))
    return contract(load_mappings(tmp_path, RESERVED_TABLES))


@pytest.fixture(scope="module")
def shipped():
    return contract(load_mappings(SHIPPED, RESERVED_TABLES))


def test_the_shipped_contract_names_every_object_field_key_and_lookup(shipped):
    assert [o.name for o in shipped.objects] == ["Contact", "Account", "Partnero_Transaction__c"]
    contact, sale = shipped.object("Contact"), shipped.object("Partnero_Transaction__c")
    assert contact.field("Partnero_Partner_Id__c").external_id
    assert contact.field("Partnero_Commission_Total__c").kind is FieldKind.NUMBER
    assert contact.field("FirstName").kind is FieldKind.ANY  # an expression without a type
    amount = sale.field("Amount__c")
    assert (amount.kind, amount.precision, amount.scale) == (FieldKind.NUMBER, 18, 6)
    assert sale.field("Status__c").max_length == len("Refunded")  # the longer of its two constants
    assert sale.field("Currency__c").max_length is None  # from the delivery: any length
    partner = sale.field("Partnero_Partner__c")
    assert (partner.kind, partner.relationship_name, partner.target, partner.target_external_id) == (
        FieldKind.LOOKUP, "Partnero_Partner__r", "Contact", "Partnero_Partner_Id__c")
    assert sale.written and sale.custom and "transaction.yml" in sale.source


def test_a_users_new_object_and_fields_are_covered_the_same_way(tmp_path):
    needs = contract_of(tmp_path, PAYOUT)
    assert [o.name for o in needs.objects] == ["Program__c", "Payout__c"]
    program, payout = needs.objects
    assert not program.written and program.field("Program_Key__c").external_id
    kinds = {f.name: f.kind for f in payout.fields}
    assert kinds == {"Payout_Id__c": FieldKind.TEXT, "Paid__c": FieldKind.CHECKBOX, "Paid_At__c": FieldKind.DATETIME,
                     "Count__c": FieldKind.INTEGER, "Kind__c": FieldKind.TEXT, "Program__c": FieldKind.LOOKUP}
    assert payout.field("Kind__c").max_length == 6


def test_an_org_set_up_for_the_mappings_fits(shipped):
    assert findings(shipped, org()) == []


def test_a_fresh_org_lacks_every_custom_field_and_object(shipped):
    fresh = org()
    for name in ("Contact", "Account"):
        fresh[name]["fields"] = [f for f in fresh[name]["fields"] if not f["name"].endswith("__c")]
    fresh["Partnero_Transaction__c"] = None
    found = [(f.object, f.field, f.problem) for f in findings(shipped, fresh)]
    assert ("Partnero_Transaction__c", None, Misfit.OBJECT_MISSING) in found
    missing = {(o, f) for o, f, p in found if p is Misfit.FIELD_MISSING}
    wanted = {(o.name, f.name) for o in shipped.objects for f in o.fields if f.name.endswith("__c")}
    assert missing == wanted


def _changed(obj: str, name: str | None, **attributes) -> dict:
    describes = copy.deepcopy(org())
    fields = describes[obj]["fields"]
    if name is not None and not attributes:
        describes[obj]["fields"] = [f for f in fields if f["name"] != name]
    for f in fields:
        if f["name"] == name:
            f.update(attributes)
    return describes


@pytest.mark.parametrize("obj, name, attributes, problem, words", [
    ("Contact", "Partnero_Status__c", {}, Misfit.FIELD_MISSING, "field-level security"),
    ("Contact", "Partnero_Status__c", {"createable": False, "updateable": False}, Misfit.NOT_WRITABLE,
     "not create or edit"),
    ("Contact", "Partnero_Status__c", {"updateable": False}, Misfit.NOT_WRITABLE, "not edit"),
    # a decimal into a text, text into a number, a boolean into a text, a datetime into a date
    ("Partnero_Transaction__c", "Amount__c", {"type": "string", "length": 255}, Misfit.WRONG_TYPE,
     "a string field; the mapping sends a decimal"),
    ("Partnero_Transaction__c", "Currency__c", {"type": "double", "precision": 18}, Misfit.WRONG_TYPE,
     "a double field; the mapping sends text"),
    ("Partnero_Transaction__c", "Amount__c", {"type": "int"}, Misfit.WRONG_TYPE, "a int field"),
    ("Partnero_Transaction__c", "Status__c", {"type": "string", "length": 5}, Misfit.TOO_SHORT,
     "holds 5 characters; the mapping writes up to 8"),
    ("Contact", "Partnero_Partner_Id__c", {"externalId": False}, Misfit.NOT_EXTERNAL_ID, "External ID"),
    ("Contact", "Partnero_Partner_Id__c", {"unique": False}, Misfit.NOT_UNIQUE, "Unique"),
    ("Account", "Partnero_Partner__c", {"referenceTo": ["Lead"]}, Misfit.WRONG_LOOKUP, "looks up Lead, not Contact"),
    ("Account", "Partnero_Partner__c", {"relationshipName": "Referrer__r"}, Misfit.WRONG_LOOKUP,
     "relationship name is Referrer__r"),
    ("Account", "Partnero_Partner__c", {"type": "string"}, Misfit.WRONG_TYPE, "a string field"),
    ("Contact", "Partnero_Partner_Id__c", {"type": "double"}, Misfit.WRONG_TYPE, "a double field"),
])
def test_each_misfit_is_named_with_what_to_do(shipped, obj, name, attributes, problem, words):
    found = findings(shipped, _changed(obj, name, **attributes))
    assert [(f.object, f.field, f.problem) for f in found] == [(obj, name, problem)], found
    assert words in found[0].detail + found[0].fix and found[0].fix


@pytest.mark.parametrize("kind, mapping_type, fits", [
    ("datetime", "datetime", True), ("date", "datetime", False), ("boolean", "boolean", True),
    ("string", "boolean", False), ("double", "boolean", False), ("double", "integer", True),
    ("int", "integer", True), ("int", "decimal", False), ("percent", "decimal", True),
    ("textarea", "string", True), ("email", "string", True), ("picklist", "string", True),
    ("date", "json", True), ("reference", "json", False),
])
def test_types_that_take_the_mappings_type(tmp_path, kind, mapping_type, fits):
    needs = contract_of(tmp_path, f"""
        object: Thing__c
        external_id: Key__c
        fields:
          Value__c: {{from: data.value, type: {mapping_type}}}
    """)
    describes = {"Thing__c": {"name": "Thing__c", "fields": [*system(), key("Key__c"), field("Value__c", kind)]}}
    found = findings(needs, describes)
    assert (found == []) is fits, found


def test_a_required_field_the_mapping_never_fills(shipped):
    describes = org()
    describes["Contact"]["fields"].append(field("Region__c", nillable=False))
    describes["Contact"]["fields"].append(field("Tier__c", nillable=False, defaultedOnCreate=True))  # has a default
    found = findings(shipped, describes)
    assert [(f.object, f.field, f.problem) for f in found] == [("Contact", "Region__c", Misfit.REQUIRED_UNFILLED)]


def test_a_looked_up_parent_needs_its_key_as_an_external_id_and_nothing_else(tmp_path):
    """A parent no mapping writes (only looked up) must have its key as an External ID; what it
    requires on create is not the mapping's business."""
    needs = contract_of(tmp_path, """
        object: Thing__c
        external_id: Key__c
        fields: {Note__c: data.note}
        references:
          Program__r: {object: Program__c, external_id: Program_Key__c, from: data.program}
    """)
    describes = {
        "Thing__c": {"name": "Thing__c", "fields": [*system(), key("Key__c"), field("Note__c"),
                                                    lookup("Program__c", "Program__c")]},
        "Program__c": {"name": "Program__c", "fields": [*system(), field("Program_Key__c", unique=True),
                                                        field("Budget__c", "currency", nillable=False)]},
    }
    found = findings(needs, describes)
    assert [(f.object, f.field, f.problem) for f in found] == [
        ("Program__c", "Program_Key__c", Misfit.NOT_EXTERNAL_ID)]  # once, on the key, not on each lookup


def test_findings_never_carry_record_values(shipped):
    found = findings(shipped, _changed("Partnero_Transaction__c", "Status__c", type="string", length=5))
    assert "Refunded" not in str([f.as_json() for f in found])
