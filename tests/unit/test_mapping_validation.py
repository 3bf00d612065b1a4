"""The mapping checker: every problem, with file, line and field, reported together."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from sync.mapping import MappingError, load_mappings
from sync.store.schema import RESERVED_TABLES

ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
entity: partner
events: [partner.created, partner.deleted]
deletes: [partner.deleted]
identity: data.id
warehouse:
  table: partners
  key: partner_id
  columns:
    email: {from: data.email, transforms: [lower]}
    approved: {from: data.approved, type: boolean}
"""


def write(tmp_path: Path, text: str, name: str = "partner.yml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path, RESERVED_TABLES)
    return [str(p) for p in info.value.problems]


def test_a_good_file_loads(tmp_path):
    loaded = load_mappings(write(tmp_path, GOOD))
    [mapping] = loaded.mappings
    assert mapping.entity == "partner"
    assert loaded.events == {"partner.created", "partner.deleted"}
    assert mapping.warehouse.column_types() == {"email": "string", "approved": "boolean"}


CASES = [
    # (what, replace this, with this, the problem expected: "line: field: message")
    ("unknown transform", "transforms: [lower]", "transforms: [lowercase]",
     "9: warehouse.columns.email.transforms: unknown transform 'lowercase' (known: bool, constant, "
     "datetime, decimal, default, integer, join, lower, map, string, strip, upper)"),
    ("bad expression", "from: data.email,", "from: 'data.[email',",
     "9: warehouse.columns.email.from: bad expression 'data.[email'"),
    ("missing identity", "identity: data.id\n", "",
     "1: identity: missing"),
    ("type clash", "approved: {from: data.approved, type: boolean}",
     "approved: {from: data.approved, type: boolean, transforms: [lower]}",
     "10: warehouse.columns.approved.type: type clash: the value is string but the column is declared boolean"),
    ("unknown type", "type: boolean", "type: bool",
     "10: warehouse.columns.approved.type: unknown type 'bool' (known: string, text, integer, decimal, boolean, "
     "datetime, json)"),
    ("duplicate column", "    approved:", "    email: data.other\n    approved:",
     "10: warehouse.columns.email: written twice"),
    ("key as a column", "    approved:", "    partner_id: data.id\n    approved:",
     "10: warehouse.columns.partner_id: duplicate column: the key column is filled from identity"),
    ("system column", "    approved:", "    sync_version: data.x\n    approved:",
     "10: warehouse.columns.sync_version: names starting with sync_ are kept for partnero-sync"),
    ("unknown key", "identity: data.id", "identity: data.id\nidentiy: data.key",
     "5: identiy: unknown key (expected one of: deletes, entity, events, identity, ledger, list, notify, salesforce, "
     "version, warehouse)"),
    ("delete not an event", "deletes: [partner.deleted]", "deletes: [partner.removed]",
     "3: deletes: partner.removed is not in events"),
    ("bad event name", "events: [partner.created, partner.deleted]", "events: [partner.created, Partner Deleted]",
     "2: events: 'Partner Deleted' is not an event type such as partner.created"),
    ("reserved table", "table: partners", "table: webhook_events",
     "6: warehouse.table: webhook_events is partnero-sync's own table"),
    ("the outbox is reserved too", "table: partners", "table: crm_outbox",
     "6: warehouse.table: crm_outbox is partnero-sync's own table"),
    ("the migrations' table", "table: partners", "table: partnero_sync_schema_version",
     "6: warehouse.table: partnero_sync_schema_version is partnero-sync's own table"),
    ("a database's own table", "table: partners", "table: sqlite_stat1",
     "6: warehouse.table: sqlite_stat1: names starting with sqlite_ or pg_ belong to the database"),
    ("from and value", "email: {from: data.email, transforms: [lower]}", "email: {from: data.email, value: x}",
     "9: warehouse.columns.email: from or value: both given (give exactly one of from, an expression, or value, a "
     "constant)"),
    ("transform needs argument", "transforms: [lower]", "transforms: [default]",
     "9: warehouse.columns.email.transforms: default needs an argument, as default: …"),
    ("transform takes none", "transforms: [lower]", "transforms: [{lower: 1}]",
     "9: warehouse.columns.email.transforms: lower takes no argument"),
    ("map needs mapping", "transforms: [lower]", "transforms: [{map: [a, b]}]",
     "9: warehouse.columns.email.transforms: map needs a mapping of values, as map: {a: b}"),
    ("no columns", "  columns:\n    email: {from: data.email, transforms: [lower]}\n"
     "    approved: {from: data.approved, type: boolean}\n", "  columns: {}\n",
     "8: warehouse.columns: must be a mapping of column: expression"),
    ("not yaml", "entity: partner", "entity: [partner",
     "2: not valid YAML: expected ',' or ']', but got ':'"),
    ("a key column kept for bookkeeping", "key: partner_id", "key: sync_version",
     "7: warehouse.key: names starting with sync_ are kept for partnero-sync"),
    ("a PostgreSQL table", "table: partners", "table: pg_partners",
     "6: warehouse.table: pg_partners: names starting with sqlite_ or pg_ belong to the database"),
    ("a key that is a number", "    approved:", "    1: data.x\n    approved:",
     "10: key '1' is not text (YAML reads it as a number): put it in quotes"),
    ("a key YAML reads as true/false", "    approved:", "    yes: data.x\n    approved:",
     "10: key 'yes' is not text (YAML reads it as true/false): put it in quotes"),
    ("a value YAML cannot read", "approved: {from: data.approved, type: boolean}",
     "approved: {value: 2025-13-45, type: datetime}", "10: a value YAML cannot read (ValueError)"),
    ("an expression too long", "from: data.email,", "from: '" + "data.x || " * 60 + "data.email',",
     "9: warehouse.columns.email.from: expression longer than 500 characters"),
    ("an expression too deep", "from: data.email,", "from: '" + "data.x || " * 40 + "data.email',",
     "9: warehouse.columns.email.from: expression nested more than 32 levels deep"),
    ("brackets too deep", "from: data.email,", "from: '" + "(" * 17 + "data.email" + ")" * 17 + "',",
     "9: warehouse.columns.email.from: expression nests brackets more than 16 deep"),
    ("a default that cannot be stored", "approved: {from: data.approved, type: boolean}",
     "approved: {from: data.approved, type: boolean, transforms: [{default: maybe}]}",
     "10: warehouse.columns.approved.transforms: cannot be stored as boolean: a text is not true or false"),
    ("a constant that cannot be stored", "approved: {from: data.approved, type: boolean}",
     "approved: {value: 1.0e+400, type: decimal}",
     "10: warehouse.columns.approved.value: cannot be stored as decimal: a number is not a finite number"),
    ("a map value that cannot be stored", "approved: {from: data.approved, type: boolean}",
     "approved: {from: data.approved, type: boolean, transforms: [{map: {'yes': perhaps}}]}",
     "10: warehouse.columns.approved.transforms: cannot be stored as boolean: map's value for 'yes': a text is "
     "not true or false"),
]


@pytest.mark.parametrize("old, new, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_names_file_line_and_field(tmp_path, old, new, expected):
    assert old in GOOD
    found = problems(write(tmp_path, GOOD.replace(old, new, 1)))
    path = tmp_path / "partner.yml"
    assert any(p.startswith(f"{path}:{expected}") for p in found), found


def test_every_problem_is_reported_at_once(tmp_path):
    broken = (
        GOOD.replace("transforms: [lower]", "transforms: [lowercase]")
        .replace("type: boolean", "type: bool")
        .replace("identity: data.id\n", "")
    )
    write(tmp_path, broken)
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path)
    assert len(info.value.problems) == 3
    message = str(info.value)
    assert message.startswith("3 problems in the mapping files:\n")
    assert "identity: missing" in message and "lowercase" in message and "'bool'" in message


def test_problems_across_files(tmp_path):
    write(tmp_path, GOOD, "partner.yml")
    write(tmp_path, GOOD.replace("entity: partner", "entity: affiliate"), "affiliate.yml")
    found = problems(tmp_path)
    assert any("partner.yml:1: events: partner.created is also handled by affiliate.yml" in p for p in found)
    assert any("partner.yml:1: warehouse.table: table 'partners' is also written by affiliate.yml" in p for p in found)


def test_an_empty_or_missing_directory_is_a_problem(tmp_path):
    assert problems(tmp_path) == [f"{tmp_path}:0: no mapping files (*.yml) here"]
    assert "mapping directory not found" in problems(tmp_path / "nowhere")[0]


LEDGER = """\
ledger:
  rewards: data.rewards
  book_on: [partner.created]
  partner: partner
  amount: {from: amount, type: decimal}
  currency: amount_units
  status: status
  occurred_at: {from: created_at, type: datetime}
"""


def test_a_ledger_section_is_checked_too(tmp_path):
    broken = LEDGER.replace("book_on: [partner.created]", "book_on: [transaction.created]").replace(
        "amount: {from: amount, type: decimal}", "amount: {from: amount, type: boolean}"
    ).replace("  status: status\n", "")
    found = problems(write(tmp_path, GOOD + broken))
    assert f"{tmp_path}/partner.yml:13: ledger.book_on: transaction.created is not in events" in found
    assert f"{tmp_path}/partner.yml:15: ledger.amount: type clash: must be decimal, not boolean" in found
    assert f"{tmp_path}/partner.yml:12: ledger.status: missing" in found


def test_book_on_must_name_every_state_the_ledger_follows(tmp_path):
    two = GOOD.replace("events: [partner.created, partner.deleted]",
                       "events: [partner.created, partner.updated, partner.deleted]")
    found = problems(write(tmp_path, two + LEDGER))
    assert found == [f"{tmp_path}/partner.yml:13: ledger.book_on: every event that is not a delete tells the rewards "
                     "(the ledger follows the newest state): add partner.updated, or leave book_on out"]
    [mapping] = load_mappings(write(tmp_path, two + LEDGER.replace("  book_on: [partner.created]\n", ""))).mappings
    assert set(mapping.ledger.fields) == {"partner", "amount", "currency", "status", "occurred_at"}


def test_a_ledgers_optional_reward_fields_are_typed(tmp_path):
    extra = LEDGER + "  key: key\n  is_currency: {from: is_currency, type: integer}\n"
    assert problems(write(tmp_path, GOOD + extra)) == [
        f"{tmp_path}/partner.yml:20: ledger.is_currency: type clash: must be boolean, not integer"]


def test_the_commission_fields_of_a_salesforce_section_are_checked(tmp_path):
    salesforce = ("salesforce:\n  object: Contact\n  external_id: Partnero_Partner_Id__c\n  fields:\n"
                  "    Email: data.email\n  commission_total: Total__c\n  commission_approved: 'not a field'\n"
                  "  commission_pending: Email\n  commission_paid: Paid__c\n")
    found = problems(write(tmp_path, GOOD + salesforce))
    path = tmp_path / "partner.yml"
    assert f"{path}:17: salesforce.commission_approved: a Salesforce field name (it receives the approved commission)" in found
    assert f"{path}:19: salesforce.commission_paid: unknown key (expected one of: commission_approved, " \
           "commission_pending, commission_total, external_id, fields, hard_delete, key, object, on_delete, references)" in found
    fixed = salesforce.replace("'not a field'", "Approved__c").replace("  commission_paid: Paid__c\n", "")
    assert f"{path}:18: salesforce.commission_pending: duplicate field (also fields.Email)" in problems(
        write(tmp_path, GOOD + fixed))
    [mapping] = load_mappings(write(tmp_path, GOOD + fixed.replace("commission_pending: Email", "commission_pending: P__c"))).mappings
    assert mapping.salesforce.commission == {"owed": "Total__c", "approved": "Approved__c", "pending": "P__c"}


def test_the_shipped_mappings_load():
    loaded = load_mappings(ROOT / "mappings")
    assert {m.entity for m in loaded.mappings} == {"partner", "customer", "transaction"}
    tables = {m.warehouse.table: m.warehouse for m in loaded.mappings}
    assert set(tables["partners"].column_types()) >= {
        "partner_key", "email", "first_name", "last_name", "status", "approved", "created_at", "updated_at",
        "deleted_at",
    }
    assert tables["partners"].key == "partner_id"
    assert set(tables["customers"].column_types()) >= {
        "partner_id", "email", "first_name", "last_name", "status", "created_at", "updated_at", "deleted_at",
    }
    assert tables["customers"].key == "customer_key"
    transactions = tables["transactions"].column_types()
    assert tables["transactions"].key == "transaction_key"
    assert set(transactions) >= {
        "customer_key", "partner_id", "action", "amount", "currency", "created_at", "deleted_at", "refunded",
    }
    assert transactions["amount"] == "decimal" and transactions["refunded"] == "boolean"


@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_mapping_file_matches_the_json_schema(path):
    schema = json.loads((ROOT / "mappings" / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_the_json_schema_refuses_what_the_checker_refuses():
    schema = json.loads((ROOT / "mappings" / "schema.json").read_text())
    document = yaml.safe_load(GOOD.replace("transforms: [lower]", "transforms: [lowercase]"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def _nested(levels: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(levels)) + "  " * levels + "x\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        # "Billion laughs": each alias repeats the one before nine times.
        ("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
         + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")),
         ":6: expands to more than 1,000,000 characters once its aliases (*name) are replaced by what they refer to"),
        ("a: &a [*a]\n", ":1: an alias refers to a node that contains it"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", ":1: nested more than 20 levels deep"),
        (_nested(30), ":20: nested more than 20 levels deep"),
        # Within the limit where it is written, deeper than it where an alias brings it in.
        ("a: &deep " + "[" * 15 + "]" * 15 + "\nb: [[[[[[[[*deep]]]]]]]]\n",
         ":2: nested more than 20 levels deep (counting what aliases bring in)"),
        ("? [a, b]\n: c\n", ":1: key is not text (YAML reads it as a list): put it in quotes"),
        ("a: " + "x" * (300 * 1024) + "\n", ":0: larger than 256 KiB: not a mapping file"),
    ],
    ids=["billion laughs", "an alias in itself", "deep flow", "deep blocks", "deep through an alias",
         "a list as a key", "a huge file"],
)
def test_a_file_that_would_cost_unbounded_memory_or_time_is_refused(tmp_path, text, expected):
    (tmp_path / "partner.yml").write_text(text)
    [problem] = problems(tmp_path)
    assert problem == f"{tmp_path / 'partner.yml'}{expected}"


@pytest.mark.parametrize("section, name", [("warehouse", "columns"), ("salesforce", "fields")])
def test_too_many_columns_are_refused(tmp_path, section, name):
    columns = "".join(f"    c{i}: data.c{i}\n" for i in range(201))
    if section == "warehouse":
        text = GOOD.split("  columns:\n")[0] + "  columns:\n" + columns
        expected = "8: warehouse.columns: more than 200 columns"
    else:
        text = GOOD + "salesforce:\n  object: Contact\n  external_id: Id__c\n  fields:\n" + columns.replace("    c", "    C")
        expected = "14: salesforce.fields: more than 200 fields"
    found = problems(write(tmp_path, text))
    assert f"{tmp_path / 'partner.yml'}:{expected}" in found


def test_the_json_schema_reserves_the_tables_the_checker_reserves():
    schema = json.loads((ROOT / "mappings" / "schema.json").read_text())
    table = schema["properties"]["warehouse"]["properties"]["table"]["not"]["anyOf"]
    assert set(table[0]["enum"]) == RESERVED_TABLES


def test_a_plain_dotted_path_is_looked_up_as_jmespath_would():
    from sync.mapping import load_mappings
    from tests.conftest import MAPPINGS

    fields = [f for m in load_mappings(MAPPINGS).mappings
              for target in (m.warehouse, m.salesforce) if target is not None
              for f in (*getattr(target, "columns", ()), *getattr(target, "fields", ()), *target.on_delete)]
    fields += [m.identity for m in load_mappings(MAPPINGS).mappings]
    paths = [f for f in fields if f.path is not None]
    assert {"data.email", "data.key"} <= {".".join(f.path) for f in paths}
    assert any(f.expression is not None and f.path is None for f in fields)  # real expressions stay JMESPath
    documents = [
        {"data": {"email": "A@x.io", "key": "k", "partner": None, "amount": 0, "approved": False, "tags": []}},
        {"data": {"email": {"nested": 1}, "key": ["a"], "created_at": ""}},
        {"data": [1, 2]}, {"data": "text"}, {"data": None}, {}, [], "x", None,
    ]
    for f in paths:
        for document in documents:
            assert f.raw(document) == _raw_by_jmespath(f, document), (f.source, document)


def _raw_by_jmespath(field, document):
    value = field.expression.search(document)
    for transform in field.transforms:
        value = transform.apply(value)
    return value


def test_a_mapping_loads_the_list_its_events_are_about_whatever_its_entity_is_called(tmp_path):
    write(tmp_path, GOOD.replace("entity: partner", "entity: affiliate"))
    write(tmp_path, GOOD.replace("entity: partner", "entity: signup").replace("partner.", "lead.")
          .replace("table: partners", "table: leads"), "lead.yml")
    found = load_mappings(tmp_path, RESERVED_TABLES)
    assert found.for_list("partners").entity == "affiliate"
    assert found.for_list("customers") is None and found.for_event("lead.created").partnero_list is None


def test_a_mapping_may_name_its_list(tmp_path):
    write(tmp_path, GOOD.replace("entity: partner", "entity: referred\nlist: customers")
          .replace("partner.", "customer.").replace("table: partners", "table: referred"))
    assert load_mappings(tmp_path, RESERVED_TABLES).for_list("customers").entity == "referred"


@pytest.mark.parametrize("change, expected", [
    (("entity: partner", "entity: partner\nlist: leads"),
     "partner.yml:2: list: must be one of Partnero's lists: partners, customers, transactions"),
    (("events: [partner.created, partner.deleted]", "events: [partner.created, customer.created, partner.deleted]"),
     "partner.yml:2: list: the events are about several of Partnero's lists (customers, partners): say which "
     "one backfill and reconcile load this file's records from with list: customers"),
])
def test_a_list_that_cannot_be_told_is_a_problem(tmp_path, change, expected):
    write(tmp_path, GOOD.replace(*change))
    assert problems(tmp_path) == [f"{tmp_path}/{expected}"]


def test_two_files_loading_one_list_is_a_problem(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace("entity: partner", "entity: affiliate\nlist: partners").replace("partner.", "lead.")
          .replace("table: partners", "table: leads"), "affiliate.yml")
    assert problems(tmp_path) == [f"{tmp_path}/partner.yml:1: list: Partnero's partners list is also loaded by "
                                  "affiliate.yml"]


def test_the_json_schema_knows_the_lists_the_checker_knows():
    from sync.mapping.spec import PARTNERO_LISTS

    schema = json.loads((ROOT / "mappings" / "schema.json").read_text())
    assert tuple(schema["properties"]["list"]["enum"]) == PARTNERO_LISTS
    document = yaml.safe_load(GOOD.replace("entity: partner", "entity: partner\nlist: leads"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
