"""A mapping's ``notify`` entries: checked with file, line and field; their templates refuse anything
but plain names and safe format specs; their condition and fields evaluated purely, within bounds."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
import yaml

from sync.core.envelope import parse as parse_envelope
from sync.mapping import MappingError, Notice, load_mappings, plan
from sync.mapping import message
from sync.mapping.spec import unset_urls
from sync.notify import webhook
from sync.store.schema import RESERVED_TABLES

ROOT = Path(__file__).resolve().parents[2]
FILE = """\
entity: transaction
events: [transaction.created, transaction.updated]
identity: data.key
warehouse:
  table: transactions
  key: transaction_key
  columns:
    amount: {from: data.amount, type: decimal}
notify:
  - name: big-sale
    on: [transaction.created]
    when: data.amount > `1000`
    url: SALES_WEBHOOK_URL
    fields:
      partner: data.partner
      amount: {from: data.amount, type: decimal}
      currency: {from: data.amount_units, transforms: [upper]}
    message: "new sale by partner {partner}: {amount:,.2f} {currency}"
"""
AT = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)


def write(tmp_path: Path, text: str = FILE) -> Path:
    (tmp_path / "transaction.yml").write_text(textwrap.dedent(text))
    return tmp_path


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(MappingError) as info:
        load_mappings(tmp_path, RESERVED_TABLES)
    return [str(p) for p in info.value.problems]


def delivery(event: str = "transaction.created", **data) -> dict:
    body = {"key": "tx_1", "partner": "ptn_8c1e6f0a", "amount": 1234.56, "amount_units": "usd", **data}
    return parse_envelope(json.dumps({"event": event, "created_at": "2026-03-14T10:15:31Z", "data": body}).encode())


def notices(tmp_path: Path, document: dict, text: str = FILE) -> tuple[Notice, ...]:
    [mapping] = load_mappings(write(tmp_path, text)).mappings
    return plan(mapping, document, "fp", AT).notices


def test_a_notify_entry_loads(tmp_path):
    [mapping] = load_mappings(write(tmp_path)).mappings
    [entry] = mapping.notify
    assert (entry.name, entry.events, entry.url_variable, entry.format) == (
        "big-sale", {"transaction.created"}, "SALES_WEBHOOK_URL", "slack")
    assert entry.message.names == ("partner", "amount", "currency")
    assert [f.type for f in entry.fields] == ["string", "decimal", "string"]


def test_on_is_every_event_of_the_file_by_default(tmp_path):
    [mapping] = load_mappings(write(tmp_path, FILE.replace("    on: [transaction.created]\n", ""))).mappings
    assert mapping.notify[0].events == {"transaction.created", "transaction.updated"}


CASES = [
    # (what, replace this, with this, the problem expected: "line: field: message")
    ("unknown field in the template", "{currency}\"", "{currencies}\"",
     "18: notify.big-sale.message: {currencies}: unknown field (fields: partner, amount, currency)"),
    ("a number's format on a text", "{amount:,.2f}", "{partner:,.2f}",
     "18: notify.big-sale.message: {partner:,.2f} formats a number, but partner is string: give it type: "
     "decimal (or integer)"),
    ("bad format spec", "{amount:,.2f}", "{amount:*^30}",
     "18: notify.big-sale.message: {amount:*^30}: not a format spec we take"),
    ("nested field in a spec", "{amount:,.2f}", "{amount:{currency}}",
     "18: notify.big-sale.message: {amount:{currency}}: not a format spec we take"),
    ("attribute access", "{partner}", "{partner.__class__}",
     "18: notify.big-sale.message: {partner.__class__}: a field is named plainly"),
    ("index access", "{partner}", "{partner[0]}",
     "18: notify.big-sale.message: {partner[0]}: a field is named plainly"),
    ("positional field", "{partner}", "{}",
     "18: notify.big-sale.message: {}: a field is named plainly"),
    ("conversion", "{partner}", "{partner!r}",
     "18: notify.big-sale.message: {partner!r}: a conversion (!r) is not allowed"),
    ("unbalanced brace", "{partner}", "{partner",
     "18: notify.big-sale.message: not a template"),
    ("on names an event the file does not handle", "on: [transaction.created]", "on: [transaction.deleted]",
     "11: notify.big-sale.on: transaction.deleted not among this file's events"),
    ("bad when", "when: data.amount > `1000`", "when: 'data.amount >'",
     "12: notify.big-sale.when: bad expression 'data.amount >'"),
    ("url is a URL", "url: SALES_WEBHOOK_URL", "url: https://hooks.example.test/T000/B000/XXXX",
     "13: notify.big-sale.url: the name of an environment variable ending in _WEBHOOK_URL"),
    ("url names another kind of variable", "url: SALES_WEBHOOK_URL", "url: DATABASE_URL",
     "13: notify.big-sale.url: the name of an environment variable ending in _WEBHOOK_URL"),
    ("unknown format", "url: SALES_WEBHOOK_URL", "url: SALES_WEBHOOK_URL\n    format: discord",
     "14: notify.big-sale.format: must be one of slack, teams, json"),
    ("bad field", "partner: data.partner", "partner: {from: data.partner, type: flag}",
     "15: notify.big-sale.fields.partner.type: unknown type 'flag'"),
    ("bad name", "name: big-sale", "name: Big Sale",
     "10: notify[1].name: a name is lower-case letters"),
    ("unknown key", "url: SALES_WEBHOOK_URL", "url: SALES_WEBHOOK_URL\n    channel: sales",
     "14: notify.big-sale.channel: unknown key"),
    ("missing message", "    message: \"new sale by partner {partner}: {amount:,.2f} {currency}\"\n", "",
     "notify.big-sale.message: missing"),
]


@pytest.mark.parametrize("old, new, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_names_file_line_and_field(tmp_path, old, new, expected):
    assert old in FILE
    found = problems(write(tmp_path, FILE.replace(old, new)))
    assert any(p.startswith(f"{tmp_path / 'transaction.yml'}:") and expected in p for p in found), found


def test_a_url_written_in_the_file_is_never_quoted(tmp_path):
    secret = "https://hooks.example.test/services/T000/B000/SECRETTOKEN"
    found = problems(write(tmp_path, FILE.replace("url: SALES_WEBHOOK_URL", f"url: {secret}")))
    assert found and not any("SECRETTOKEN" in p for p in found)


def test_two_entries_of_one_name_are_a_problem(tmp_path):
    entry = FILE[FILE.index("  - name: big-sale"):]
    found = problems(write(tmp_path, FILE + entry))
    assert any(": notify.big-sale.name: duplicate name (entry 1 has it too)" in p for p in found), found


def test_every_problem_of_an_entry_is_reported_at_once(tmp_path):
    text = FILE.replace("{currency}\"", "{currencies}\"").replace("on: [transaction.created]", "on: [x.y]")
    found = problems(write(tmp_path, text))
    assert len(found) == 2, found


def test_an_unset_url_variable_is_named_with_file_entry_and_variable(tmp_path):
    loaded = load_mappings(write(tmp_path))
    [problem] = unset_urls(loaded, {"OTHER_WEBHOOK_URL": "https://x.test"})
    assert str(problem) == (f"{tmp_path / 'transaction.yml'}:10: notify.big-sale.url: SALES_WEBHOOK_URL is not "
                            "set: this entry's messages would fail (set it to the webhook's URL)")
    assert unset_urls(loaded, {"SALES_WEBHOOK_URL": "https://x.test"}) == []


def test_the_message_is_rendered_when_the_condition_holds(tmp_path):
    [notice] = notices(tmp_path, delivery())
    assert notice == Notice("big-sale", "SALES_WEBHOOK_URL", "slack", "new sale by partner ptn_8c1e6f0a: 1,234.56 USD")


@pytest.mark.parametrize("fmt, shown", [
    ("slack", "new sale by partner &lt;!channel&gt; &amp; &lt;https://x.test|click&gt;: 1,234.56 USD"),
    ("teams", "new sale by partner <!channel> & <https://x.test|click>: 1,234.56 USD"),
    ("json", "new sale by partner <!channel> & <https://x.test|click>: 1,234.56 USD"),
])
def test_a_value_is_escaped_where_the_body_is_markup(tmp_path, fmt, shown):
    """In Slack's text a value can never become a mention or a link: &, < and > escaped, as
    Slack asks; the template's own text is left as written."""
    text = FILE.replace("    url: SALES_WEBHOOK_URL\n", f"    url: SALES_WEBHOOK_URL\n    format: {fmt}\n")
    [notice] = notices(tmp_path, delivery(partner="<!channel> & <https://x.test|click>"), text)
    assert notice.text == shown


def test_no_message_when_the_condition_is_false_or_the_event_is_not_its(tmp_path):
    assert notices(tmp_path, delivery(amount=999)) == ()
    assert notices(tmp_path, delivery(amount=None)) == ()
    assert notices(tmp_path, delivery("transaction.updated")) == ()


@pytest.mark.parametrize("value, sent", [(0, True), ("x", True), ([1], True), ({"a": 1}, True), (True, True),
                                         (None, False), (False, False), ("", False), ([], False), ({}, False)])
def test_the_condition_is_true_as_jmespath_says(tmp_path, value, sent):
    text = FILE.replace("when: data.amount > `1000`", "when: data.flag")
    assert bool(notices(tmp_path, delivery(flag=value), text)) is sent


def test_a_field_that_cannot_be_computed_fails_the_message_not_the_delivery(tmp_path):
    text = FILE.replace("partner: data.partner", "partner: {from: data.partner, type: integer}")
    [mapping] = load_mappings(write(tmp_path, text)).mappings
    planned = plan(mapping, delivery(partner="ptn_SECRET"), "fp", AT)
    [notice] = planned.notices
    assert notice.text == "" and notice.problem.startswith("transaction.yml: notify.big-sale.fields.partner: ")
    assert "SECRET" not in notice.problem and planned.change.values["amount"] == Decimal("1234.56")


def test_a_condition_that_trips_fails_the_message_naming_where(tmp_path):
    text = FILE.replace("when: data.amount > `1000`", "when: length(data.amount)")
    [notice] = notices(tmp_path, delivery(), text)
    assert notice.text == "" and notice.problem.startswith("transaction.yml: notify.big-sale.when: length() was given")


def test_a_condition_within_the_expression_bounds(tmp_path):
    """A ``when`` that would build too much is refused when the file is checked (the bounds of every expression)."""
    text = FILE.replace("when: data.amount > `1000`", "when: '[" + ", ".join(["@"] * 33) + "]'")
    assert any("notify.big-sale.when: expression can build a value" in p for p in problems(write(tmp_path, text)))


def test_a_backfill_plan_sends_nothing(tmp_path):
    [mapping] = load_mappings(write(tmp_path)).mappings
    assert plan(mapping, delivery(), "fp", AT, notify=False).notices == ()


@pytest.mark.parametrize("template, values, text", [
    ("{a:,.2f}", {"a": Decimal("1234.5")}, "1,234.50"),
    ("{a:d}", {"a": 12}, "12"),
    ("{a:>6}|", {"a": "ab"}, "    ab|"),
    ("{a} {b}", {"a": None, "b": True}, " true"),
    ("{{literal}} {a}", {"a": Decimal("1E+3")}, "{literal} 1000"),
    ("{a}", {"a": datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)}, "2026-03-14T10:15:00+00:00"),
])
def test_templates_render(template, values, text):
    parsed, problem = message.parse(template)
    assert problem is None
    assert parsed.render(values) == text


def test_a_value_that_does_not_take_its_spec_names_the_field_not_the_value():
    parsed, _ = message.parse("{a:d}")
    with pytest.raises(ValueError) as info:
        parsed.render({"a": "SECRET-VALUE"})
    assert str(info.value) == "{a:d}: its value (str) does not take this format"


def test_a_message_is_bounded():
    parsed, _ = message.parse("{a}{a}")
    text = parsed.render({"a": "x" * 10_000})
    assert len(text) == message.MAX_MESSAGE and text.endswith("…")
    assert message.parse("x" * (message.MAX_TEMPLATE + 1))[1] == f"longer than {message.MAX_TEMPLATE} characters"


def test_the_message_formats_are_the_webhooks():
    assert webhook.FORMATS == ("slack", "teams", "json") and webhook.DEFAULT_FORMAT == "slack"


def test_the_shipped_example_loads_and_matches_the_json_schema(tmp_path):
    """The commented-out example in transaction.yml, uncommented: it loads, and the schema takes it."""
    shipped = (ROOT / "mappings" / "transaction.yml").read_text()
    start = shipped.index("# notify:")
    example = "\n".join(line[2:] for line in shipped[start:].splitlines())
    text = shipped[:start] + example + "\n"
    [mapping] = load_mappings(write(tmp_path, text), RESERVED_TABLES).mappings
    assert [n.name for n in mapping.notify] == ["big-sale"]
    schema = json.loads((ROOT / "mappings" / "schema.json").read_text())
    jsonschema.validate(yaml.safe_load(text.replace("\n    on:", "\n    'on':")), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text.replace("url: SALES_WEBHOOK_URL", "url: https://x.test/")
                                           .replace("\n    on:", "\n    'on':")), schema)


def test_the_settings_read_every_webhook_url_variable_and_never_show_one():
    from sync.settings import Settings

    secret = "https://hooks.example.test/services/T000/B000/zq9token"
    settings = Settings.from_env({"SALES_WEBHOOK_URL": f" {secret} ", "BLANK_WEBHOOK_URL": " ", "WEBHOOK_URL": secret,
                                  "SALES_WEBHOOK_URLS": secret})
    assert settings.webhook_urls == {"SALES_WEBHOOK_URL": secret}
    assert "zq9token" not in repr(settings) and "zq9token" not in str(settings)
    hash(settings)  # still hashable (frozen): the URLs are left out of its hash
