"""Programs in the mapping engine: expressions read ``program``, a Salesforce section's ``key``
gives the external id, references find their parent through the parent's key, and ``program``
is no column a mapping may write. Pure."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml

from sync.mapping import MappingError, identify, load_mappings, plan, salesforce_key
from sync.mapping.evaluate import FieldProblem, record_key
from sync.partnero.samples import sample_delivery
from sync.store.schema import RESERVED_TABLES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "mappings"
ARRIVED = datetime(2026, 3, 1, tzinfo=timezone.utc)
PARTNER = """\
entity: partner
events: [partner.created, partner.deleted]
deletes: [partner.deleted]
identity: data.id
warehouse:
  table: partners
  key: partner_id
  columns:
    email: data.email
    seen_in: program
"""
SALESFORCE = """\
salesforce:
  object: Contact
  external_id: Partnero_Partner_Id__c
  fields:
    Email: data.email
    Partnero_Program__c: program
"""


def write(directory: Path, text: str, name: str = "partner.yml") -> Path:
    (directory / name).write_text(textwrap.dedent(text))
    return directory


def problems(directory: Path) -> list[str]:
    with pytest.raises(MappingError) as info:
        load_mappings(directory, RESERVED_TABLES)
    return [str(p) for p in info.value.problems]


def delivery(event: str = "partner.created", **data) -> dict:
    return {"event": event, "created_at": "2026-03-01T10:00:00Z", "data": {"id": "p1", "email": "a@b.co", **data}}


def shipped(entity: str):
    return next(m for m in load_mappings(SHIPPED, RESERVED_TABLES).mappings if m.entity == entity)


# -- program in expressions ------------------------------------------------------------------


@pytest.mark.parametrize("program", ["default", "affiliate", "brand-2"])
def test_every_expression_reads_the_program(tmp_path, program):
    mapping = load_mappings(write(tmp_path, PARTNER + SALESFORCE)).mappings[0]
    planned = plan(mapping, delivery(), "f" * 64, ARRIVED, program=program)
    assert planned.change.values["seen_in"] == program
    assert planned.crm.values["Partnero_Program__c"] == program


def test_without_a_program_the_program_is_default(tmp_path):
    mapping = load_mappings(write(tmp_path, PARTNER + SALESFORCE)).mappings[0]
    planned = plan(mapping, delivery(), "f" * 64, ARRIVED)
    assert planned.change.values["seen_in"] == "default"
    assert planned.crm.values["Partnero_Program__c"] == "default"


def test_the_program_wins_over_one_the_delivery_carries(tmp_path):
    mapping = load_mappings(write(tmp_path, PARTNER)).mappings[0]
    document = {**delivery(), "program": "forged"}
    planned = plan(mapping, document, "f" * 64, ARRIVED, program="affiliate")
    assert planned.change.values["seen_in"] == "affiliate"
    assert document["program"] == "forged"  # the caller's document is left as it was


def test_the_identity_reads_the_program(tmp_path):
    text = PARTNER.replace("identity: data.id", "identity: \"join('/', [program, data.id])\"")
    mapping = load_mappings(write(tmp_path, text)).mappings[0]
    assert record_key(mapping, delivery()) == "default/p1"
    assert record_key(mapping, delivery(), "friends") == "friends/p1"
    assert identify(mapping, delivery(), "friends") == "friends/p1"
    assert identify(mapping, delivery()) == "default/p1"
    assert plan(mapping, delivery(), "f" * 64, program="friends").key == "friends/p1"


def test_a_rewards_fields_read_the_program(tmp_path):
    text = (SHIPPED / "transaction.yml").read_text().replace("  status: status\n", "  status: program\n")
    assert "status: program" in text
    mapping = load_mappings(write(tmp_path, text, "transaction.yml")).mappings[0]
    document = sample_delivery("transaction.created")
    document["data"]["rewards"][0]["program"] = "forged"  # ours wins here too
    [reward] = plan(mapping, document, "f" * 64, ARRIVED, program="brand-2").rewards
    assert reward.status == "brand-2"


# -- salesforce.key --------------------------------------------------------------------------


def test_without_a_key_the_external_id_is_the_identity(tmp_path):
    mapping = load_mappings(write(tmp_path, PARTNER + SALESFORCE)).mappings[0]
    planned = plan(mapping, delivery(), "f" * 64, ARRIVED, program="affiliate")
    assert planned.key == "p1"
    assert planned.crm.key == "p1" and planned.crm.key_column == "Partnero_Partner_Id__c"
    assert salesforce_key(mapping, "p1", "affiliate") == "p1"


def test_a_key_gives_the_external_id(tmp_path):
    text = PARTNER + SALESFORCE + "  key: \"join('.', [id, program])\"\n"
    mapping = load_mappings(write(tmp_path, text)).mappings[0]
    planned = plan(mapping, delivery(), "f" * 64, ARRIVED, program="affiliate")
    assert planned.key == "p1" and planned.change.key == "p1"  # the warehouse keeps the identity
    assert planned.crm.key == "p1.affiliate"
    assert salesforce_key(mapping, "p9", "friends") == "p9.friends"


@pytest.mark.parametrize("program, expected", [("default", "p1"), ("affiliate", "affiliate:p1"),
                                               ("a-b", "a-b:p1")])
def test_the_shipped_mappings_keep_the_plain_id_for_default_only(program, expected):
    for entity, event, identity in (("partner", "partner.created", "ptn_8c1e6f0a"),
                                    ("customer", "customer.created", "acct_000481"),
                                    ("transaction", "transaction.created", "in_1OxY3b2eZvKYlo2C0aQ1")):
        document = sample_delivery(event)
        planned = plan(shipped(entity), document, "f" * 64, ARRIVED, program=program)
        assert planned.key == identity, entity
        assert planned.crm.key == expected.replace("p1", identity), entity
        assert planned.crm.values["Partnero_Program__c"] == program


def test_a_whole_number_identity_is_keyed_as_its_digits():
    planned = plan(shipped("partner"), sample_delivery("partner.created", id=42), "f" * 64, ARRIVED,
                   program="affiliate")
    assert planned.key == "42" and planned.crm.key == "affiliate:42"


def test_a_key_that_gives_no_usable_id_refuses_the_salesforce_record_only():
    identity = "p" * 250  # an id, but with "affiliate:" before it longer than 255 characters
    document = sample_delivery("partner.created", id=identity)
    planned = plan(shipped("partner"), document, "f" * 64, ARRIVED, program="affiliate")
    assert planned.change.key == identity  # the warehouse row is written
    assert planned.crm.key == identity  # refused under its identity
    assert planned.crm_problem == ("partner.yml: salesforce.key: program == 'default' && id || "
                                   "join(':', [program, id]) is longer than 255 characters: too long for an "
                                   "external id")
    assert "ppppp" not in planned.crm_problem  # the value is never quoted
    with pytest.raises(FieldProblem, match="salesforce.key"):
        salesforce_key(shipped("partner"), identity, "affiliate")
    assert plan(shipped("partner"), document, "f" * 64, ARRIVED).crm_problem is None  # default: the plain id


BAD_KEYS = [
    ("'data.id'", "for program 'default' and id 'x' it gives nothing"),
    ("program", "for program 'default' and id 'y' it gives what it gives for program 'default' and id 'x': "
                "two records would share one external id"),
    ("{value: same}", "for program 'default' and id 'y' it gives what it gives for program 'default' and id "
                      "'x': two records would share one external id"),
    ("\"id == 'x'\"", "for program 'default' and id 'x' it is true/false: an external id is a text or a whole "
                      "number"),
    ("'[id]'", "for program 'default' and id 'x' it is a list: an external id is a text or a whole number"),
    ("\"join('', [program, id, '\\n'])\"", "for program 'default' and id 'x' it holds control characters or "
                                           "broken Unicode: not an external id"),
    ("\"program == 'default' && id\"", "for program 'a-b' and id 'x' it is true/false: an external id is a text "
                                       "or a whole number"),
    ("'id.['", "bad expression 'id.['"),
    ("\"to_number(id)\"", "for program 'default' and id 'x' it gives nothing"),
]


@pytest.mark.parametrize("key, expected", BAD_KEYS, ids=[k for k, _ in BAD_KEYS])
def test_a_key_that_gives_no_usable_external_id_is_a_problem(tmp_path, key, expected):
    text = PARTNER + SALESFORCE + f"  key: {key}\n"
    found = problems(write(tmp_path, text))
    line = text.count("\n")
    assert any(p.startswith(f"{tmp_path / 'partner.yml'}:{line}: salesforce.key") and expected in p
               for p in found), found


def test_a_key_may_make_one_record_of_one_id_in_every_program(tmp_path):
    mapping = load_mappings(write(tmp_path, PARTNER + SALESFORCE + "  key: id\n")).mappings[0]
    keys = {plan(mapping, delivery(), "f" * 64, ARRIVED, program=p).crm.key for p in ("default", "affiliate")}
    assert keys == {"p1"}


def test_the_signature_covers_the_key(tmp_path):
    plain = load_mappings(write(tmp_path, PARTNER + SALESFORCE)).mappings[0].salesforce.signature
    keyed = load_mappings(write(tmp_path, PARTNER + SALESFORCE + "  key: \"join(':', [program, id])\"\n"))
    other = load_mappings(write(tmp_path, PARTNER + SALESFORCE + "  key: \"join('/', [program, id])\"\n"))
    signatures = {plain, keyed.mappings[0].salesforce.signature, other.mappings[0].salesforce.signature}
    assert len(signatures) == 3


# -- references through the parent's key ------------------------------------------------------


def test_a_reference_goes_through_its_parents_key():
    document = sample_delivery("transaction.created")
    for program, prefix in (("default", ""), ("affiliate", "affiliate:")):
        values = plan(shipped("transaction"), document, "f" * 64, ARRIVED, program=program).crm.values
        assert values["Partnero_Partner__r"] == {"Partnero_Partner_Id__c": f"{prefix}ptn_8c1e6f0a"}
        assert values["Partnero_Customer__r"] == {"Partnero_Customer_Key__c": f"{prefix}acct_000481"}
    # The partner's own record is upserted by the very value its children look it up by.
    partner = plan(shipped("partner"), sample_delivery("partner.created"), "f" * 64, ARRIVED, program="affiliate")
    assert partner.crm.key == "affiliate:ptn_8c1e6f0a"


def test_an_empty_reference_stays_empty():
    document = sample_delivery("customer.created", partner=None)
    values = plan(shipped("customer"), document, "f" * 64, ARRIVED, program="affiliate").crm.values
    assert values["Partnero_Partner__r"] is None


CUSTOMER = """\
entity: customer
events: [customer.created]
identity: data.key
warehouse:
  table: customers
  key: customer_key
  columns:
    partner_id: data.partner
salesforce:
  object: Account
  external_id: Partnero_Customer_Key__c
  fields:
    Name: data.key
  references:
    Partnero_Partner__r: {object: Contact, external_id: Partnero_Partner_Id__c, from: data.partner}
    Owner__r: {object: User, external_id: Partnero_User__c, from: data.owner}
"""


def test_a_reference_to_an_object_no_mapping_writes_keeps_its_value(tmp_path):
    write(tmp_path, PARTNER + SALESFORCE + "  key: \"join(':', [program, id])\"\n")
    loaded = load_mappings(write(tmp_path, CUSTOMER, "customer.yml"))
    customer = next(m for m in loaded.mappings if m.entity == "customer")
    document = {"event": "customer.created", "data": {"key": "c1", "partner": "p1", "owner": "u1"}}
    values = plan(customer, document, "f" * 64, ARRIVED, program="friends").crm.values
    assert values["Owner__r"] == {"Partnero_User__c": "u1"}
    assert values["Partnero_Partner__r"] == {"Partnero_Partner_Id__c": "friends:p1"}
    # The key a reference goes through is part of what the section sends.
    assert [r.key is not None for r in customer.salesforce.references] == [True, False]


def test_a_parent_written_by_two_mappings_with_different_keys_is_ambiguous(tmp_path):
    write(tmp_path, PARTNER + SALESFORCE + "  key: \"join(':', [program, id])\"\n")
    lead = (PARTNER.replace("entity: partner", "entity: lead").replace("[partner.created, partner.deleted]",
                                                                    "[lead.created]")
            .replace("deletes: [partner.deleted]\n", "").replace("table: partners", "table: leads")
            + SALESFORCE)
    write(tmp_path, lead, "lead.yml")
    write(tmp_path, CUSTOMER, "customer.yml")
    found = problems(tmp_path)
    assert found == [f"{tmp_path / 'customer.yml'}:15: salesforce.references.Partnero_Partner__r: "
                     "Contact.Partnero_Partner_Id__c is written by lead.yml and partner.yml with different keys: "
                     "which one this reference goes through is ambiguous"]
    # The same key in both: no doubt which one.
    write(tmp_path, lead + "  key: \"join(':', [program, id])\"\n", "lead.yml")
    assert len(load_mappings(tmp_path, RESERVED_TABLES).mappings) == 3


# -- program is partnero-sync's column ---------------------------------------------------------


@pytest.mark.parametrize("old, new, expected", [
    ("    seen_in: program\n", "    program: data.program\n",
     "10: warehouse.columns.program: program is kept for partnero-sync: it fills the program's name on every table"),
    ("key: partner_id", "key: program",
     "7: warehouse.key: program is kept for partnero-sync: it fills the program's name on every table"),
    ("warehouse:\n", "warehouse:\n  on_delete:\n    program: {value: gone}\n",
     "7: warehouse.on_delete.program: program is kept for partnero-sync: it fills the program's name on every "
     "table"),
], ids=["a column", "the key column", "a column a delete sets"])
def test_a_column_may_not_be_named_program(tmp_path, old, new, expected):
    assert old in PARTNER
    found = problems(write(tmp_path, PARTNER.replace(old, new)))
    assert f"{tmp_path / 'partner.yml'}:{expected}" in found


def test_the_json_schema_reserves_program_too():
    schema = json.loads((SHIPPED / "schema.json").read_text())
    for old, new in (("    seen_in: program\n", "    program: data.program\n"), ("key: partner_id", "key: program")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load(PARTNER.replace(old, new)), schema)
    jsonschema.validate(yaml.safe_load(PARTNER + SALESFORCE + "  key: \"join(':', [program, id])\"\n"), schema)
