"""Text from outside (a delivery's ids, what Salesforce says, what an older ledger holds) reaches
the operator's terminal escaped: no control character, escape sequence or line break of its own,
and values still told apart."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from sync.ops.terminal import safe
from sync.partnero.samples import TRANSACTION
from sync.partnero.webhooks import render as render_webhooks
from sync.store.ledger import commission_entries
from tests.test_hostile_input import partner, sale, service  # noqa: F401 - service is a fixture
from tests.test_salesforce_sync import password_login

#: What an escape sequence can do to a terminal: clear it, retitle it, draw a line of its own.
HOSTILE = "bad \x1b[2J\x1b]0;owned\x07 value\r\nFAKE: all well\x9b31m\u202eevil"


@pytest.mark.parametrize("text, shown", [
    ("ptn_8c1e6f0a", "ptn_8c1e6f0a"),
    ("Daniel Kim é 😀 東京", "Daniel Kim é 😀 東京"),
    ("a\x1b[31mred", "a\\x1b[31mred"),
    ("one\ntwo\rthree\tfour", "one\\ntwo\\rthree\\tfour"),
    ("csi\x9b2J", "csi\\x9b2J"),
    ("\u202eright-to-left", "\\u202eright-to-left"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("back\\slash", "back\\\\slash"),
    ("half \ud800", "half \\ud800"),
    (None, "None"),
], ids=["plain", "other scripts", "ESC", "line breaks", "C1 CSI", "bidi override", "zero width", "backslash",
        "lone surrogate", "not a text"])
def test_safe_escapes_what_a_terminal_would_act_on(text, shown):
    assert safe(text) == shown
    assert safe(text).isprintable()


def test_safe_keeps_values_apart():
    values = ["a\x1b", "a\\x1b", "a\\\\x1b", "a\n", "a\\n", "a"]
    assert len({safe(v) for v in values}) == len(values)


def _printable(output: str) -> bool:
    return all(line.isprintable() for line in output.splitlines())


def test_crm_errors_ledger_and_status_print_outside_text_escaped(service, fake):  # noqa: F811
    receiver = service(salesforce=password_login(fake))
    # Record ids may hold characters a terminal acts on (C1 controls, bidi overrides): stored, and shown escaped.
    partner_id = "ptn\x9b2J\u202e1"
    fake.reject(lambda record: True, "FIELD_CUSTOM_VALIDATION_EXCEPTION", HOSTILE, sobject="Contact")
    ids = receiver.deliver(partner(partner_id),
                           sale("tx\u202e1", partner=partner_id,
                                rewards=[{**TRANSACTION["rewards"][0], "partner": partner_id}]))
    assert receiver.inbox(ids) == [("processed", None)] * 2
    receiver.services.flusher().flush()

    errors = receiver.cli("crm-errors", fake=fake)
    assert errors.exit_code == 0, errors.output
    [line] = [line for line in errors.output.splitlines() if "Contact" in line]
    assert line.endswith(f"Contact {safe(partner_id)}: FIELD_CUSTOM_VALIDATION_EXCEPTION: {safe(HOSTILE)}")
    assert _printable(errors.output) and len(errors.output.splitlines()) == 2  # the Contact, and its waiting child

    statement = receiver.cli("ledger", partner_id)
    assert statement.exit_code == 0, statement.output
    assert f"partner {safe(partner_id)}:" in statement.output and safe("tx\u202e1") in statement.output
    assert _printable(statement.output)

    # A ledger booked before currencies were checked may hold anything: status shows it escaped.
    with receiver.services.inbox.engine.begin() as conn:
        conn.execute(sa.insert(commission_entries).values(
            entry_type="commission", transaction_key="tx_old", reward_ref="ptn_old#1", partner_id="ptn_old",
            amount=1, currency="E\x1b[2J", recorded_at=datetime.now(timezone.utc), seq=1, standing="pending",
            is_currency=True))
    status = receiver.cli("status")
    assert "program currency   E\\x1b[2J (the most used" in status.output, status.output
    assert _printable(status.output)


def test_the_webhooks_partnero_lists_are_shown_escaped():
    hooks = [{"key": "wh_1\x1b[2J", "name": "Shop\nFAKE", "url": "https://example.com/\u202e", "is_active": True,
              "events": ["partner.created", "evil\x07"]}]
    shown = render_webhooks(hooks)
    assert len(shown.splitlines()) == 2 and _printable(shown)
    assert "wh_1\\x1b[2J" in shown and "Shop\\nFAKE" in shown and "evil\\x07" in shown
