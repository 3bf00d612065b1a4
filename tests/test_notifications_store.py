"""The notifications table: one row per delivery and entry (a delivery applied again adds none), and
due rows claimed by one worker at a time, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from sync.store import db, notifications
from sync.mapping import Notice
from sync.store.notifications import NotificationStatus
from tests.conftest import held_by_another_transaction

AT = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)


def rows(*inbox_ids: int, name: str = "big-sale") -> list[tuple[int, Notice]]:
    return [(i, Notice(name, "SALES_WEBHOOK_URL", "slack", f"new sale #{i}")) for i in inbox_ids]


def add(engine, new: list[tuple[int, Notice]], program: str = "default", at: datetime = AT) -> None:
    with engine.begin() as conn:
        notifications.add(conn, new, at, program=program)


def all_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(notifications.notifications)
                                                       .order_by(notifications.notifications.c.id))]


def test_a_delivery_adds_each_entry_once_whatever_it_is_applied_again(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1, 2))
    add(engine, rows(1, 2, 3))  # a replay of 1 and 2, and a new delivery
    add(engine, rows(1, name="new-partner"))  # another entry of delivery 1
    add(engine, rows(1), program="friends")  # the key names the program too
    found = all_rows(engine)
    assert [(r["program"], r["inbox_id"], r["name"]) for r in found] == [
        ("default", 1, "big-sale"), ("default", 2, "big-sale"), ("default", 3, "big-sale"),
        ("default", 1, "new-partner"), ("friends", 1, "big-sale")]
    assert {r["status"] for r in found} == {NotificationStatus.PENDING}
    assert found[0]["text"] == "new sale #1" and found[0]["next_try_at"] == AT


def test_a_row_already_sent_stays_sent_when_its_delivery_is_applied_again(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1))
    [claimed] = notifications.claim(engine, AT)
    notifications.sent(engine, claimed.id, AT + timedelta(seconds=1))
    add(engine, rows(1), at=AT + timedelta(hours=1))
    [row] = all_rows(engine)
    assert (row["status"], row["attempts"], row["sent_at"]) == ("sent", 1, AT + timedelta(seconds=1))
    assert notifications.claim(engine, AT + timedelta(days=1)) == []


def test_a_message_that_could_not_be_made_is_failed_with_its_reason(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, [(1, Notice("big-sale", "SALES_WEBHOOK_URL", "slack", "",
                            "transaction.yml: notify.big-sale.fields.amount: a text is not a number"))])
    [row] = all_rows(engine)
    assert (row["status"], row["last_error"], row["next_try_at"]) == (
        "failed", "transaction.yml: notify.big-sale.fields.amount: a text is not a number", None)
    assert notifications.claim(engine, AT + timedelta(days=1)) == []


def test_a_claimed_row_is_left_alone_until_its_lease_lapses(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1, 2))
    first = notifications.claim(engine, AT)
    assert [(c.inbox_id, c.attempts) for c in first] == [(1, 1), (2, 1)]
    assert notifications.claim(engine, AT + timedelta(seconds=notifications.CLAIM_LEASE - 1)) == []
    # Its worker died: the rows come back once the lease is over, counting another attempt.
    again = notifications.claim(engine, AT + timedelta(seconds=notifications.CLAIM_LEASE))
    assert [(c.inbox_id, c.attempts) for c in again] == [(1, 2), (2, 2)]


def test_a_claim_skips_the_rows_another_worker_is_claiming(database_url):
    """PostgreSQL (and MariaDB): a claim in progress holds its rows; another skips them, never waits
    or takes them too. (SQLite has one writer: the other claim waits for the first to commit.)"""
    engine = db.engine_for(database_url)
    add(engine, rows(1, 2, 3))
    if engine.dialect.name == "sqlite":
        assert [c.inbox_id for c in notifications.claim(engine, AT, limit=2)] == [1, 2]
        assert [c.inbox_id for c in notifications.claim(engine, AT)] == [3]
        return
    with held_by_another_transaction(database_url, "SELECT id FROM notifications WHERE inbox_id IN (1, 2) FOR UPDATE"):
        assert [c.inbox_id for c in notifications.claim(engine, AT)] == [3]
    assert [c.inbox_id for c in notifications.claim(engine, AT)] == [1, 2]


def test_not_sent_retries_later_or_fails_for_good(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1, 2))
    one, two = notifications.claim(engine, AT)
    notifications.not_sent(engine, one.id, "HTTP 503", AT + timedelta(seconds=30))
    notifications.not_sent(engine, two.id, "HTTP 404; still not taken after 10 attempts", None)
    assert notifications.claim(engine, AT + timedelta(seconds=29)) == []
    with engine.connect() as conn:
        assert notifications.next_due(conn) == AT + timedelta(seconds=30)
        summary = notifications.summary(conn)
        assert notifications.of_delivery(conn, 2)[0]["last_error"] == "HTTP 404; still not taken after 10 attempts"
    assert summary.counts == {"pending": 1, "sent": 0, "failed": 1}
    assert summary.oldest_age(AT + timedelta(minutes=5)) == 300
    [again] = notifications.claim(engine, AT + timedelta(seconds=30))
    assert (again.inbox_id, again.attempts) == (1, 2)


def test_the_summary_is_by_program(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1, 2))
    add(engine, rows(3), program="friends", at=AT + timedelta(minutes=1))
    [claimed] = notifications.claim(engine, AT, limit=1)
    notifications.sent(engine, claimed.id, AT)
    with engine.connect() as conn:
        every, friends, empty = (notifications.summary(conn), notifications.summary(conn, "friends"),
                                 notifications.summary(conn, "nobody"))
    assert every.counts == {"pending": 2, "sent": 1, "failed": 0} and every.oldest_unsent_at == AT
    assert friends.counts == {"pending": 1, "sent": 0, "failed": 0}
    assert friends.oldest_unsent_at == AT + timedelta(minutes=1)
    assert (empty.counts, empty.oldest_unsent_at, empty.oldest_age(AT)) == ({"pending": 0, "sent": 0, "failed": 0},
                                                                           None, 0.0)


def test_prune_drops_the_texts_of_old_messages_done_with_and_keeps_their_rows(warehouse_url):
    engine = db.engine_for(warehouse_url)
    add(engine, rows(1, 2, 3, 4), at=AT - timedelta(days=100))
    add(engine, rows(5), at=AT)  # recent
    for claimed in notifications.claim(engine, AT):
        if claimed.inbox_id == 1:
            notifications.sent(engine, claimed.id, AT)
        elif claimed.inbox_id == 2:
            notifications.not_sent(engine, claimed.id, "HTTP 404", None)  # failed for good
        else:  # 3, 4 and 5 wait for another try: still to be sent
            notifications.not_sent(engine, claimed.id, "HTTP 503", AT + timedelta(minutes=5))
    before = AT - timedelta(days=90)
    assert notifications.prunable_texts(engine, before) == 2
    assert notifications.prune_texts(engine, before, batch=1) == 2  # in batches, to the end
    texts = {r["inbox_id"]: r["text"] for r in all_rows(engine)}
    assert texts == {1: "", 2: "", 3: "new sale #3", 4: "new sale #4", 5: "new sale #5"}
    assert notifications.prune_texts(engine, before) == 0
    add(engine, rows(1, 2))  # their deliveries applied again: still never sent twice
    assert len(all_rows(engine)) == 5
