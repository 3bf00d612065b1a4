"""Processing one stored delivery: mapping, warehouse, ledger and inbox in one SQL transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync import ledger
from sync.db import is_transient
from sync.envelope import MalformedDelivery
from sync.errors import PermanentError, TransientError
from sync.inbox import IGNORED, PROCESSED, Event, Inbox
from sync.mapping import MappingSet, parse_document, plan
from sync.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass
class Processor:
    engine: Engine
    inbox: Inbox
    mappings: MappingSet
    warehouse: Warehouse

    def process(self, event: Event) -> str:
        """Apply ``event``; returns the status it ends with (processed or ignored).

        Applying the same delivery again changes nothing: every write merges by version and the
        ledger's constraints refuse a second booking.
        """
        try:
            document = parse_document(event.body)
        except ValueError as exc:
            raise MalformedDelivery("body is not valid JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise MalformedDelivery('delivery has no "data" object')
        mapping = self.mappings.for_event(event.event_type)
        if mapping is None:
            self.inbox.mark_processed(event.id, status=IGNORED)
            return IGNORED
        what = plan(mapping, document, event.fingerprint)
        try:
            with self.engine.begin() as conn:
                if what.change is not None:
                    state = self.warehouse.apply(conn, what.change, event.id)
                    key = what.change.key
                    if what.rewards:
                        ledger.book(conn, key, what.rewards, event.id)
                    if mapping.ledger is not None and state.tombstoned:
                        # Also when the create arrives after its refund: it is reversed at once.
                        ledger.reverse(conn, key, state.deleted[0], event.id)
                self.inbox.mark_processed(event.id, conn)
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc) or isinstance(exc, sa.exc.IntegrityError):
                # A lost connection, a deadlock or a race on a unique key: the next try sees the
                # other transaction's work.
                raise TransientError(f"database: {type(exc).__name__}: {_first_line(exc)}") from exc
            raise PermanentError(f"database refused the write: {_first_line(exc)}") from exc
        return PROCESSED


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
