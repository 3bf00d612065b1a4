"""One classifier for database errors: SQLite, PostgreSQL and MariaDB put the same cause on the same side.

Passing (try again later): a lost connection, a lock wait or deadlock, a schema that lags the
mappings. About the data (the delivery fails, once): a value the column cannot hold.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from sync import db
from sync.inbox import webhook_events
from tests.conftest import held_by_another_transaction


def _error(engine: sa.Engine, statement: str, params: dict | None = None) -> BaseException:
    with pytest.raises(sa.exc.SQLAlchemyError) as raised:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params or {})
    return raised.value


def test_a_schema_that_lags_the_mappings_is_passing(warehouse_url):
    engine = db.engine_for(warehouse_url)
    assert db.is_transient(_error(engine, "SELECT not_there_yet FROM partners"))
    assert db.is_transient(_error(engine, "SELECT 1 FROM table_not_there_yet"))
    assert db.is_transient(_error(engine, "INSERT INTO partners (partner_id, not_there_yet) VALUES ('p', 'x')"))


def test_a_value_the_column_cannot_hold_is_about_the_data(warehouse_url):
    engine = db.engine_for(warehouse_url)
    missing = _error(engine, "INSERT INTO webhook_events (fingerprint, event_type, body, received_at, status) "
                             "VALUES (NULL, 'partner.created', '', '2026-01-01 00:00:00', 'pending')")
    assert not db.is_transient(missing)
    twice = "INSERT INTO partners (partner_id) VALUES ('same')"
    with engine.begin() as conn:
        conn.execute(sa.text(twice))
    assert not db.is_transient(_error(engine, twice))
    if engine.dialect.name != "sqlite":  # SQLite stores any number and any length
        assert not db.is_transient(_error(engine, "INSERT INTO commission_entries (entry_type, transaction_key, "
                                                  "reward_ref, partner_id, amount, recorded_at) VALUES ('c', 't', "
                                                  "'r', 'p', 10000000000000000, '2026-01-01 00:00:00')"))
        assert not db.is_transient(_error(engine, "INSERT INTO webhook_events (fingerprint, event_type, body, "
                                                  "received_at, status) VALUES (:fp, 'x', '', '2026-01-01', 'p')",
                                          {"fp": "f" * 65}))


def test_a_lock_held_too_long_is_passing(warehouse_url):
    engine = db.engine_for(warehouse_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO partners (partner_id) VALUES ('locked')"))
    waiter = db.make_engine(warehouse_url) if engine.dialect.name != "sqlite" else sa.create_engine(
        warehouse_url, connect_args={"timeout": 0.2, "check_same_thread": False})
    holding = "UPDATE partners SET email = 'a' WHERE partner_id = 'locked'"
    try:
        with held_by_another_transaction(warehouse_url, holding), pytest.raises(sa.exc.SQLAlchemyError) as raised:
            with waiter.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                elif engine.dialect.name != "sqlite":
                    conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
                conn.execute(sa.text("UPDATE partners SET email = 'b' WHERE partner_id = 'locked'"))
        assert db.is_transient(raised.value), raised.value
    finally:
        waiter.dispose()


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
    "mysql+pymysql://root@127.0.0.1:1/nowhere",
    "sqlite:////nonexistent-directory/partnero.db",
], ids=["postgresql", "mariadb", "sqlite"])
def test_a_database_that_cannot_be_reached_is_passing(url):
    engine = db.make_engine(url)
    with pytest.raises(sa.exc.SQLAlchemyError) as raised:
        with engine.connect() as conn:
            conn.execute(sa.select(webhook_events.c.id).limit(1))
    assert db.is_transient(raised.value)


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_described_errors_do_not_echo_values(server, request):
    engine = db.engine_for(request.getfixturevalue(server))  # SQLite never echoes values
    statement = ("INSERT INTO commission_entries (entry_type, transaction_key, reward_ref, partner_id, amount, "
                 "recorded_at) VALUES ('c', 't', 'r', 'p', 'private-987', '2026-01-01 00:00:00')")
    text = db.describe_error(_error(engine, statement))
    assert "private-987" not in text and len(text) <= 400


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_a_deadlock_is_passing(server, request):
    """Two transactions that lock two rows in opposite orders: the database picks a victim."""
    url = request.getfixturevalue(server)
    engine = db.engine_for(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM partners WHERE partner_id IN ('dl_a', 'dl_b')"))
        conn.execute(sa.text("INSERT INTO partners (partner_id) VALUES ('dl_a'), ('dl_b')"))
    first_locked, second_locked = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def take(first: str, second: str, mine: threading.Event, theirs: threading.Event) -> None:
        worker = db.make_engine(url)
        try:
            with worker.begin() as conn:
                conn.execute(sa.text("UPDATE partners SET email = 'x' WHERE partner_id = :k"), {"k": first})
                mine.set()
                theirs.wait(10)
                conn.execute(sa.text("UPDATE partners SET email = 'y' WHERE partner_id = :k"), {"k": second})
        except sa.exc.SQLAlchemyError as exc:
            errors.append(exc)
        finally:
            worker.dispose()

    threads = [threading.Thread(target=take, args=("dl_a", "dl_b", first_locked, second_locked)),
               threading.Thread(target=take, args=("dl_b", "dl_a", second_locked, first_locked))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors  # one victim; the other went through
    assert "deadlock" in str(errors[0]).lower()
    assert db.is_transient(errors[0])
