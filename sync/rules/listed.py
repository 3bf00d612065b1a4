"""Objects listed by Partnero's REST API, as the deliveries that bring them in. Pure, no I/O.

A listed object goes through the same mappings as a webhook: it becomes the delivery Partnero
would have sent for its current state (``partner.updated``, ``customer.updated``,
``transaction.updated``), and an object that is deleted (a refunded transaction) also becomes
the delete (``transaction.deleted``). The state tells what the record held, so the ledger books a
refunded transaction's commission and reverses it, net zero, whatever it already holds.

Each delivery's time (``created_at``) is when the list was asked for: the object was at least
that new then. Mappings prefer the object's own ``updated_at`` where it has one, so a listed
partner never overwrites a newer one; a transaction has none, and its listed state is newer than
any webhook sent before the list was read, older than any sent after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync.core import envelope
from sync.core.errors import ConfigurationError
from sync.mapping import Mapping, MappingSet
from sync.mapping.spec import PARTNERO_LISTS

#: Partnero's list endpoints, parents first (a customer names its partner, a transaction both).
ENTITIES = PARTNERO_LISTS
#: The field that identifies an object of each list (``GET /{entity}/{id}``).
ID_FIELD = {"partners": "id", "customers": "key", "transactions": "key"}


def mappings_for(mappings: MappingSet, entities: Sequence[str] | None = None) -> dict[str, Mapping]:
    """The mapping of each of ``entities`` (None: every list a mapping loads from), parents first.

    Raises ``ConfigurationError`` when one of them has no mapping, or none is loaded at all: a list
    read for nothing would be skipped whole, page after page."""
    wanted = ENTITIES if entities is None else tuple(e for e in ENTITIES if e in entities)
    found = {e: m for e in wanted if (m := mappings.for_list(e)) is not None}
    missing = [e for e in wanted if e not in found]
    if entities is not None and missing:
        raise ConfigurationError(
            f"no mapping file loads Partnero's {' and '.join(missing)} list{'s' if len(missing) > 1 else ''}: a "
            f"mapping loads the list its events are about (customer.* events: customers), or the one its "
            f"`list:` names; add `list: {missing[0]}` to the file that maps them, or leave {missing[0]} out "
            f"(--entities)")
    if not found:
        raise ConfigurationError(
            f"no mapping file loads any of Partnero's lists ({', '.join(ENTITIES)}): a mapping loads the list "
            "its events are about (partner.* events: partners), or the one its `list:` names")
    return found


def is_deleted(obj: dict[str, Any]) -> bool:
    """Whether Partnero lists ``obj`` as deleted (a transaction: refunded)."""
    return bool(obj.get("deleted_at")) or obj.get("deleted") is True or obj.get("status") == "deleted"


def changed_at(obj: dict[str, Any]) -> datetime | None:
    """The latest of the object's own times (created, updated, deleted), for ``--since``."""
    times = [envelope.parse_timestamp(obj.get(name)) for name in ("created_at", "updated_at", "deleted_at")]
    return max((t for t in times if t is not None), default=None)


@dataclass(frozen=True)
class Listed:
    """One listed object, as the delivery (or two: its state, then its delete) that applies it."""

    entity: str
    #: The object's id in Partnero (``ID_FIELD``), when it has one.
    object_id: str | None
    #: (event type, document) each; the state first.
    documents: tuple[tuple[str, dict[str, Any]], ...]

    def bodies(self) -> list[tuple[str, bytes]]:
        """Each delivery as (event type, body), the bytes the inbox stores."""
        return [(event, envelope.dump(document)) for event, document in self.documents]


def listed(mapping: Mapping, entity: str, obj: dict[str, Any], observed_at: datetime, source: str) -> Listed:
    """The deliveries that bring ``obj`` (listed at ``observed_at``) in through ``mapping``.

    ``source`` ("backfill", "reconcile") is written into each delivery, for whoever reads it.
    """
    events = [state_event(mapping)]
    if is_deleted(obj) and mapping.deletes:
        events.append(sorted(mapping.deletes)[0])
    object_id = obj.get(ID_FIELD[entity])
    return Listed(entity, str(object_id) if object_id not in (None, "") else None,
                  tuple(_document(event, observed_at, source, obj) for event in events))


def gone(mapping: Mapping, entity: str, object_id: str, observed_at: datetime, source: str) -> Listed | None:
    """The delete for an object Partnero no longer has (``GET`` answered 404); None when
    ``mapping`` has no delete event."""
    if not mapping.deletes:
        return None
    data = {ID_FIELD[entity]: object_id, "deleted_at": _stamp(observed_at)}
    return Listed(entity, object_id, (_document(sorted(mapping.deletes)[0], observed_at, source, data),))


def _document(event: str, at: datetime, source: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The delivery of ``event`` about ``data``, as if sent at ``at``: (event type, document)."""
    return event, {"event": event, "created_at": _stamp(at), "source": source, "data": data}


def _stamp(at: datetime) -> str:
    """A time as Partnero writes it: ``2026-03-14T10:15:30.000000Z``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_event(mapping: Mapping) -> str:
    """The event type a listed object's state comes as: ``<entity>.updated`` when the mapping
    handles it, else ``<entity>.created``, else the first it handles that is not a delete."""
    states = sorted(mapping.events - mapping.deletes)
    for preferred in (f"{mapping.entity}.updated", f"{mapping.entity}.created"):
        if preferred in states:
            return preferred
    return states[0] if states else sorted(mapping.events)[0]
