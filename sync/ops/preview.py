"""`partnero-sync mappings preview`: what a delivery would write, computed without writing."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from sync.core.envelope import MalformedDelivery, read_event
from sync.mapping import DEFAULT_PROGRAM, MappingSet, plan
from sync.ops.terminal import safe
from sync.rules.commissions import standing
from sync.store.inbox import fingerprint


def render(mappings: MappingSet, body: bytes, arrived_at: datetime, program: str = DEFAULT_PROGRAM) -> str:
    """A readable account of the writes ``body`` implies, were it to arrive at ``arrived_at`` as a
    delivery of ``program``, or why it implies none. The Salesforce record is named by what its
    external id would hold (the mapping's ``salesforce.key``).

    Raises ``FieldProblem`` when the delivery would fail, with the reason the worker would give.
    """
    try:
        document, event = read_event(body)
    except MalformedDelivery as exc:
        return f"not a delivery: {exc}"
    mapping = mappings.for_event(event)
    if mapping is None:
        return f"{event}: no mapping handles this event; it would be stored as ignored"
    if not isinstance(document.get("data"), dict):
        return f'{event}: delivery has no "data" object; it would fail'
    what = plan(mapping, document, fingerprint(body), arrived_at, program=program)
    lines = [f"{event} -> {mapping.path.name} ({mapping.entity}), program {program}"]
    change = what.change
    if change is not None:
        action = "tombstone" if change.deleting else "upsert"
        lines.append(f"warehouse {change.table}: {action} {change.key_column} = {change.key!r}")
        lines.append(f"  version {_show(change.version.at)}" + (" (a delete: its fields count only until a real state arrives)" if change.deleting else ""))
        for name, value in change.values.items():
            lines.append(f"  {name} = {_show(value)}")
        for name, value in change.tombstone.items():
            lines.append(f"  {name} = {_show(value)}  (kept: set by the delete)")
    if what.rewards is not None:
        lines.append(f"ledger commission_entries: {len(what.rewards)} reward(s); when this is the newest state, "
                     "each stands as told here (booked, or adjusted from what stood)")
        for reward in what.rewards:
            kind = "" if reward.is_currency else " (not money: points or credits)"
            lines.append(
                f"  reward {safe(reward.ref)}: partner {safe(reward.partner_id)} amount {_show(reward.amount)} "
                f"{safe(reward.currency or '')} status {safe(reward.status)} -> {standing(reward.status)}{kind}"
            )
    if what.reverses:
        lines.append("ledger commission_entries: a refund: whatever stands for this transaction is reversed, once")
    if what.crm is not None:  # what CRM sync (when on) would queue for Salesforce
        crm = what.crm
        if what.crm_problem is not None:
            lines.append(f"salesforce {crm.table}: refused, the rest is written: {safe(what.crm_problem)}")
        else:
            lines.append(f"salesforce {crm.table}: upsert {crm.key_column} = {crm.key!r}")
            for name, value in {**crm.values, **crm.tombstone}.items():
                lines.append(f"  {name} = {_show(value)}")
    lines += _notices(mapping, event, what.notices)
    return "\n".join(lines)


def _notices(mapping, event: str, notices) -> list[str]:
    """What each ``notify`` entry of ``event`` would do: the message it would send (to which
    variable's URL), why it would fail, or that its condition is false."""
    lines = []
    sent = {notice.name: notice for notice in notices}
    for entry in mapping.notify:
        if event not in entry.events:
            continue
        notice = sent.get(entry.name)
        head = f"notify {entry.name} -> {entry.url_variable} ({entry.format})"
        if notice is None:
            lines.append(f"{head}: not sent, its condition is false: {safe(entry.when_source or '')}")
        elif notice.problem is not None:
            lines.append(f"{head}: would fail, the rest is written: {safe(notice.problem)}")
        else:
            lines.append(f"{head}: {safe(notice.text)}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return repr(value)
