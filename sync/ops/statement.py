"""``partnero-sync ledger PARTNER_ID``: one partner's entries and totals per currency, as a table a
person reads before paying, or as JSON. A statement is of one program: a partner of several
programs has a statement in each, and their amounts are never added together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from sync.ops.terminal import safe
from sync.settings import Program
from sync.store import ledger

#: The entry columns shown, with their headings.
_COLUMNS = (("occurred_at", "Occurred (UTC)"), ("transaction_key", "Transaction"), ("reward_ref", "Reward"),
            ("entry_type", "Type"), ("amount", "Amount"), ("standing", "Standing"),
            ("reward_status", "Status"), ("event_id", "Inbox"))


@dataclass(frozen=True)
class Statement:
    """One partner's ledger in one program: its newest entries, and its totals per currency and kind."""

    partner_id: str
    program: str
    #: The newest entries asked for, oldest first.
    entries: list[dict[str, Any]]
    #: How many entries the partner has in all (the totals count every one).
    count: int
    totals: list[ledger.Totals]
    #: Where Salesforce's totals come from.
    currencies: ledger.Summary
    #: The variable that sets the program's currency.
    currency_variable: str = "PARTNERO_CURRENCY"

    def in_salesforce(self, totals: ledger.Totals) -> bool:
        return totals.is_currency and totals.currency == self.currencies.currency

    def as_dict(self) -> dict[str, Any]:
        return {
            "partner_id": self.partner_id,
            "program": self.program,
            "program_currency": self.currencies.currency,
            "program_currency_from": self.currencies.chosen_by,
            "entry_count": self.count,
            "entries": [{name: _json(value) for name, value in entry.items()} for entry in self.entries],
            "totals": [
                {"currency": t.currency, "is_currency": t.is_currency,
                 **{name: _amount(getattr(t, name)) for name in ledger.TOTALS},
                 "in_salesforce": self.in_salesforce(t)}
                for t in self.totals
            ],
        }


def take(engine: Engine, partner_id: str, program: Program, limit: int | None) -> Statement | None:
    """The statement of ``partner_id`` in ``program``; None when the program's ledger has no entry
    for that partner."""
    with engine.connect() as conn:
        entries, count = ledger.partner_entries(conn, partner_id, limit, program=program.name)
        if not count:
            return None
        return Statement(partner_id, program.name, entries, count,
                         ledger.totals(conn, [partner_id], program=program.name),
                         ledger.summary(conn, program.currency, program=program.name), program.variable("CURRENCY"))


def take_each(engine: Engine, partner_id: str, programs: Sequence[Program], limit: int | None) -> list[Statement]:
    """The statement of ``partner_id`` in each of ``programs`` that holds entries for it, in their order."""
    found = (take(engine, partner_id, program, limit) for program in programs)
    return [statement for statement in found if statement is not None]


def render_each(statements: Sequence[Statement], several: bool) -> str:
    """The statements one after the other, each naming its program when the deployment serves
    ``several``; never one total across them."""
    return "\n\n".join(render(statement, several) for statement in statements)


def as_json(statements: Sequence[Statement], by_program: bool) -> dict[str, Any]:
    """One statement as its ``as_dict``; or, ``by_program`` (several programs, none chosen), every
    statement under its program: {"partner_id", "programs": {PROGRAM: statement}}."""
    if not by_program:
        return statements[0].as_dict()
    return {"partner_id": statements[0].partner_id,
            "programs": {statement.program: statement.as_dict() for statement in statements}}


def render(statement: Statement, several: bool = False) -> str:
    """One statement as tables; its program named when the deployment serves ``several``."""
    where = f" in program {safe(statement.program)}" if several else ""
    lines = [f"Commission ledger of partner {safe(statement.partner_id)}{where}: {statement.count} entries"
             + (f", the newest {len(statement.entries)} shown" if len(statement.entries) < statement.count else "")]
    rows = [[heading for _, heading in _COLUMNS]]
    for entry in statement.entries:
        rows.append([_cell(name, entry) for name, _ in _COLUMNS])
    lines += [""] + _table(rows, right={4})
    rows = [["Totals", *ledger.TOTALS, ""]]
    for t in statement.totals:
        label = safe(t.currency or "no currency") + ("" if t.is_currency else " (not money)")
        if statement.in_salesforce(t):
            note = "sent to Salesforce"
        elif not t.is_currency:
            note = "not in Salesforce: points or credits"
        else:
            note = "not in Salesforce: not the program currency"
        rows.append([label, *(_amount(getattr(t, name)) for name in ledger.TOTALS), note])
    lines += [""] + _table(rows, right={1, 2, 3, 4, 5})
    lines += ["", f"Program currency: {safe(statement.currencies.describe(statement.currency_variable))}.",
              "Owed is approved + pending; currencies are never added together."]
    return "\n".join(line.rstrip() for line in lines)


def _cell(name: str, entry: dict[str, Any]) -> str:
    value = entry[name]
    if name == "occurred_at":
        return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
    if name == "amount":
        unit = safe(entry["currency"] or "")
        return f"{_amount(value)} {unit}".rstrip() + ("" if entry["is_currency"] else " (not money)")
    if name == "event_id":
        return f"#{value}" if value is not None else "-"
    return "-" if value is None else safe(value)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def _amount(value: Decimal) -> str:
    return format(value, "f")


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _amount(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
