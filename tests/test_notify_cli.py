"""`mappings check` and `mappings preview` on a mapping with ``notify:`` entries."""

from __future__ import annotations

import json

from tests.test_cli import run
from tests.test_notify_pipeline import MARKER, notify_mappings, sale

URL = "https://hooks.example.test/services/T000/B000/zq9token"


def test_check_names_an_unset_url_variable_with_file_line_and_entry(tmp_path):
    directory = notify_mappings(tmp_path / "mappings")
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(directory), "SALES_WEBHOOK_URL": URL,
                                           "OPS_WEBHOOK_URL": ""})
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "1 problem in the mapping files:"
    assert lines[1].startswith(f"  {directory / 'transaction.yml'}:")
    assert lines[1].endswith(": notify.ops-copy.url: OPS_WEBHOOK_URL is not set: this entry's messages would fail "
                             "(set it to the webhook's URL)")
    assert URL not in result.output


def test_check_passes_when_every_variable_is_set_and_lists_the_entries(tmp_path):
    directory = notify_mappings(tmp_path / "mappings")
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(directory), "SALES_WEBHOOK_URL": URL,
                                           "OPS_WEBHOOK_URL": URL})
    assert result.exit_code == 0, result.output
    assert "transaction: 3 events -> table transactions (8 columns), ledger, notify big-sale, ops-copy" in result.output
    assert result.output.endswith("mappings OK\n") and URL not in result.output


def test_check_reports_a_template_naming_an_unknown_field(tmp_path):
    directory = notify_mappings(tmp_path / "mappings", extra="")
    path = directory / "transaction.yml"
    path.write_text(path.read_text().replace("{currency}\"", "{amount_units}\""))
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(directory), "SALES_WEBHOOK_URL": URL})
    assert result.exit_code == 1
    assert ": notify.big-sale.message: {amount_units}: unknown field (fields: partner, amount, currency)" in result.output


def preview(tmp_path, document: dict, extra: str = "") -> str:
    directory = notify_mappings(tmp_path / "mappings", extra=extra)
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(document))
    result = run("mappings", "preview", "--dir", str(directory), str(saved))
    assert result.exit_code == 0, result.output
    return result.output


def test_preview_renders_the_message_a_delivery_would_send(tmp_path):
    shown = preview(tmp_path, sale(1234.56))
    assert shown.splitlines()[-1] == f"notify big-sale -> SALES_WEBHOOK_URL (slack): new sale by partner {MARKER}: 1,234.56 USD"


def test_preview_says_when_the_condition_is_false(tmp_path):
    shown = preview(tmp_path, sale(10))
    assert shown.splitlines()[-1] == ("notify big-sale -> SALES_WEBHOOK_URL (slack): not sent, its condition is "
                                      "false: data.amount > `1000`")


def test_preview_says_why_a_message_would_fail(tmp_path):
    extra = """
  - name: typed
    url: OPS_WEBHOOK_URL
    fields: {partner: {from: data.partner, type: integer}}
    message: "{partner}"
"""
    shown = preview(tmp_path, sale(10), extra)
    assert shown.splitlines()[-1].startswith("notify typed -> OPS_WEBHOOK_URL (slack): would fail, the rest is "
                                             "written: transaction.yml: notify.typed.fields.partner: ")
    assert MARKER not in shown.splitlines()[-1]

