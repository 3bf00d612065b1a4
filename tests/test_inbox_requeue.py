"""``Inbox.requeue``, behind /ops's Replay, on each database: a done or failed row goes back to
pending with the time of the request, a pending one stays as it is, a pruned one is left alone, and
a row another transaction holds is reported busy at once, never waited for."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from sync.store import db
from sync.store.inbox import PRUNED_BODY, Delivery, DeliveryStatus, Inbox, RequeueAnswer, webhook_events
from tests.conftest import held_by_another_transaction


def stored(inbox: Inbox, n: int) -> list[int]:
    found = inbox.store_many([Delivery(b'{"n": %d}' % i, "partner.created", DeliveryStatus.PENDING) for i in range(n)])
    return sorted(s.id for s in found.values())


def row(inbox: Inbox, event_id: int) -> dict:
    with inbox.engine.connect() as conn:
        return dict(conn.execute(sa.select(webhook_events).where(webhook_events.c.id == event_id)).one()._mapping)


@pytest.fixture
def inbox(warehouse_url) -> Inbox:
    return Inbox(db.engine_for(warehouse_url))


def test_requeue_sets_a_done_or_failed_row_back_to_pending_and_notes_when(inbox):
    done, failed, pending, pruned = stored(inbox, 4)
    inbox.mark_done([done, pruned])
    inbox.mark_failures({failed: "a reason"})
    with inbox.engine.begin() as conn:
        conn.execute(webhook_events.update().where(webhook_events.c.id == pruned).values(body=PRUNED_BODY))
    assert [inbox.requeue(i) for i in (done, failed, pending, pruned, 999_999)] == [
        RequeueAnswer.REQUEUED, RequeueAnswer.REQUEUED, RequeueAnswer.ALREADY_PENDING, RequeueAnswer.PRUNED, None]
    for event_id in (done, failed):
        after = row(inbox, event_id)
        assert (after["status"], after["attempts"], after["claimed_until"]) == (DeliveryStatus.PENDING, 0, None)
        assert after["replay_asked_at"] is not None
    assert row(inbox, failed)["last_error"] == "a reason"  # kept until an attempt succeeds
    assert row(inbox, pending)["replay_asked_at"] is not None
    assert (row(inbox, pruned)["status"], row(inbox, pruned)["replay_asked_at"]) == (DeliveryStatus.PROCESSED, None)
    [claimed] = [e.id for e in inbox.claim(10) if e.id == done]  # a worker takes it up like any other
    assert claimed == done


@pytest.mark.parametrize("warehouse_url", ["postgresql", "mariadb"], indirect=True)  # SQLite locks no rows
def test_requeue_never_waits_for_a_row_another_transaction_holds(inbox, warehouse_url):
    [event_id] = stored(inbox, 1)
    inbox.mark_failures({event_id: "a reason"})
    with held_by_another_transaction(warehouse_url, f"SELECT * FROM webhook_events WHERE id = {event_id} FOR UPDATE"):
        started = time.monotonic()
        assert inbox.requeue(event_id) == RequeueAnswer.BUSY
        assert time.monotonic() - started < 3
    assert row(inbox, event_id)["status"] == DeliveryStatus.FAILED
    assert inbox.requeue(event_id) == RequeueAnswer.REQUEUED
