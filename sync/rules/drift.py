"""Drift: how what Partnero lists differs from what the warehouse and the ledger hold. Pure.

A listed object is compared by applying its plans to the record's stored state (``records.merge``,
the same merge a delivery goes through) and to its reward chains (``commissions.settle``, the same
rules the ledger follows): it drifts exactly when applying it would change something. So an
object older than what is held is no drift (it would not win), and an object applied once is no
drift the next time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sync.mapping import Plan
from sync.rules import commissions
from sync.rules.commissions import Entry
from sync.rules.records import RecordState, merge

class DriftKind(StrEnum):
    """How a record differs, in the order reports list the kinds."""

    MISSING = "missing here"
    STALE = "stale here"
    ARCHIVED = "archived upstream"
    DELETED = "deleted upstream"
    COMMISSION = "commission moved"
    GONE = "not in Partnero"
    UNREADABLE = "cannot be applied"


@dataclass(frozen=True)
class Drift:
    """One record that differs: which, how, and which of its columns or rewards (names only,
    never values: drift reports end up in logs)."""

    entity: str
    key: str
    kind: DriftKind
    fields: tuple[str, ...] = field(default=())
    #: Why it cannot be applied (``DriftKind.UNREADABLE``), in the mapping's words.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        found = {"entity": self.entity, "key": self.key, "kind": self.kind, "fields": list(self.fields)}
        if self.reason is not None:
            found["reason"] = self.reason
        return found


def compare(
    entity: str,
    obj: dict[str, Any],
    plans: Sequence[Plan],
    held: RecordState | None,
    entries: Iterable[Entry],
    tombstone_columns: Iterable[str],
) -> Drift | None:
    """How applying ``plans`` (one listed object's: its state, then its delete) would change the
    record: its stored state ``held`` (None: no row) and its ledger ``entries``. None: it would not.
    """
    changes = [p.change for p in plans if p.change is not None]
    if not changes:
        return None  # a mapping without a warehouse table: nothing here to compare with
    key = str(changes[0].key)
    if held is None or (held.version is None and held.deleted is None):
        return Drift(entity, key, DriftKind.MISSING)
    tombstones = tuple(tombstone_columns)
    after = held
    for change in changes:
        after = merge(after, change, tombstones)
    if after.tombstoned and not held.tombstoned:
        return Drift(entity, key, DriftKind.DELETED)
    differing = tuple(sorted(c for c, v in after.values.items() if v != held.values.get(c)))
    if differing:
        return Drift(entity, key, DriftKind.ARCHIVED if obj.get("status") == "archived" else DriftKind.STALE, differing)
    state = next((p for p in plans if p.change is not None and p.change.version == after.version), None)
    if state is not None and state.rewards is not None:
        at = after.version.at
        refunded_at = after.deleted[0] if after.deleted is not None else None
        moved = commissions.settle(key, list(entries), state.rewards, after.tombstoned, at, refunded_at)
        if moved:
            return Drift(entity, key, DriftKind.COMMISSION, tuple(sorted({e.reward_ref for e in moved})))
    return None
