"""Which state of a record wins: a pure merge that any order of deliveries converges through.

A record's columns come from the delivery with the greatest version (rank, time, fingerprint):
a real state (created, updated…) outranks what a delete payload says, the newer outranks the
older, and the fingerprint settles exact ties. A delete also sets its tombstone columns; the
tombstone is kept for good, so a late, older update cannot bring the record back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sync.mapping.evaluate import RecordChange, Version


@dataclass(frozen=True)
class RecordState:
    values: dict[str, Any] = field(default_factory=dict)
    version: Version | None = None
    deleted: tuple[datetime, str] | None = None  # the winning delete's (time, fingerprint)

    @property
    def tombstoned(self) -> bool:
        return self.deleted is not None


def merge(state: RecordState, change: RecordChange, tombstone_columns: Iterable[str]) -> RecordState:
    """The record after ``change``; equal to ``state`` when the change is old news."""
    values = dict(state.values)
    version, deleted = state.version, state.deleted
    # Equal versions are the same delivery (same fingerprint): applying it again re-reads it
    # through the current mappings, which is what a replay after a mapping change needs.
    if version is None or change.version >= version:
        values.update(change.values)
        version = change.version
        if deleted is not None:
            for column in tombstone_columns:  # what the delete set stays set
                values[column] = state.values.get(column)
    if change.deleting:
        candidate = (change.version.at, change.version.fingerprint)
        if deleted is None or candidate >= deleted:
            values.update(change.tombstone)
            deleted = candidate
    return RecordState(values, version, deleted)


def bookkeeping(state: RecordState) -> dict[str, Any]:
    """The ``sync_`` columns that store ``state``'s version and tombstone."""
    return {
        "sync_rank": state.version.rank if state.version else None,
        "sync_version": state.version.at if state.version else None,
        "sync_fingerprint": state.version.fingerprint if state.version else None,
        "sync_deleted_version": state.deleted[0] if state.deleted else None,
        "sync_deleted_fingerprint": state.deleted[1] if state.deleted else None,
    }


def from_bookkeeping(values: dict[str, Any], row: Any) -> RecordState:
    """The state stored in a row's ``sync_`` columns, with ``values`` as its fields."""
    version = Version(row["sync_rank"], row["sync_version"], row["sync_fingerprint"]) if row["sync_version"] else None
    deleted = (row["sync_deleted_version"], row["sync_deleted_fingerprint"]) if row["sync_deleted_version"] else None
    return RecordState(values, version, deleted)
