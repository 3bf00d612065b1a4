"""Locks another database session holds, and database blips, against the real drain job.

A delivery that waits on a lock waits alone: it stays pending, is let go of for a later retry and
never counts as a suspect, while its batch-mates are applied within seconds. A passing error takes
back the attempt its claim counted, so blips never make rows be claimed one at a time. Every
statement carries a bounded lock wait of its own, in the workers and in the web process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.store import db
from sync.store.inbox import DeliveryStatus, Inbox, webhook_events
from sync.worker import jobs
from tests.conftest import MAPPINGS, REDIS_URL, empty_database, empty_tables, held_by_another_transaction, signed
from tests.test_worker import row, store

#: Statements of another session that lock the customers table, by dialect.
TABLE_LOCK = {"postgresql": "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE", "mysql": "LOCK TABLES customers WRITE"}
#: Time enough to apply a small batch twice over and wait on a lock a few times (2 s each), on a
#: busy machine; a drain stalled behind the lock takes the lock's whole 60 s instead.
WITHIN_SECONDS = 15


def _services(url: str, redis_conn) -> Services:
    from sync.settings import Settings

    settings = Settings(webhook_secrets=("s",), database_url=url, redis_url=REDIS_URL, mappings_dir=MAPPINGS)
    services = Services.build(settings, redis_conn)
    return services


@contextmanager
def database_lock_timeout(url: str, value: str | None):
    """While the block runs, new sessions of PostgreSQL database ``url`` get the database's own
    ``lock_timeout`` ``value`` (None: the server's default, no time-out)."""
    engine = db.engine_for(url)
    name = engine.url.database
    if value is not None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"ALTER DATABASE {name} SET lock_timeout = '{value}'"))
        engine.dispose()
    try:
        yield
    finally:
        if value is not None:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f"ALTER DATABASE {name} RESET lock_timeout"))
            engine.dispose()


def _timed_drain(services: Services) -> float:
    started = time.monotonic()
    jobs.drain(services)
    return time.monotonic() - started


def _as_if_later(url: str) -> None:
    """Time passes: every hold on an inbox row has run out."""
    with db.engine_for(url).begin() as conn:
        conn.execute(webhook_events.update().values(claimed_until=datetime.now(timezone.utc) - timedelta(seconds=1)))


def _others(count: int) -> list[dict]:
    return [sample_delivery("partner.created", id=f"ptn_other_{i}") for i in range(count)]


@pytest.mark.usefixtures("whole_drains")
@pytest.mark.parametrize("server_setting", [None, "500ms", "1min"], ids=["no-db-timeout", "db-500ms", "db-1min"])
def test_a_delivery_waiting_on_a_row_lock_waits_alone_and_the_others_are_applied_within_seconds(
    pg_url, redis_conn, server_setting
):
    empty_tables(pg_url)
    _row_lock_case(pg_url, redis_conn, server_setting)


@pytest.mark.usefixtures("whole_drains")
def test_a_delivery_waiting_on_a_row_lock_waits_alone_on_mariadb(mariadb_url, redis_conn):
    empty_tables(mariadb_url)
    _row_lock_case(mariadb_url, redis_conn, None)  # the server's own wait: innodb_lock_wait_timeout, 50 s


def _row_lock_case(url: str, redis_conn, server_setting: str | None) -> None:
    services = _services(url, redis_conn)
    settings = services.settings
    [first] = store(settings, sample_delivery("partner.created", id="ptn_locked"))
    jobs.drain(services)
    assert row(settings, first)["status"] == "processed"
    locked = store(settings, sample_delivery("partner.updated", id="ptn_locked", email="new@example.com",
                                             updated_at="2026-03-15T10:00:00Z"))
    others = store(settings, *_others(20))
    held = "UPDATE partners SET email = 'dba@example.com' WHERE partner_id = 'ptn_locked'"
    with database_lock_timeout(url, server_setting), held_by_another_transaction(url, held):
        took = _timed_drain(services)
        assert {row(settings, i)["status"] for i in others} == {"processed"}
        waiting = row(settings, locked[0])
    assert took < WITHIN_SECONDS, took
    # It waits alone: pending, let go of until its retry, and no suspect (its attempt taken back).
    assert waiting["status"] == DeliveryStatus.PENDING and waiting["last_error"].startswith("waited on a lock")
    assert waiting["attempts"] == 0
    assert waiting["claimed_until"] > datetime.now(timezone.utc) + timedelta(seconds=5)
    assert {row(settings, i)["attempts"] for i in others} == {1}
    # Its retry falls due once the lock is gone: applied.
    _as_if_later(url)
    jobs.drain(services)
    assert row(settings, locked[0])["status"] == "processed"


@pytest.mark.usefixtures("whole_drains")
@pytest.mark.parametrize("kind, server_setting", [("postgresql", None), ("postgresql", "500ms"), ("mariadb", None)],
                         ids=["postgresql-no-db-timeout", "postgresql-db-500ms", "mariadb-server-50s"])
def test_a_locked_table_holds_up_only_the_deliveries_to_it(kind, server_setting, request, tmp_path, redis_conn):
    server_url = empty_database(kind, request, tmp_path)
    services = _services(server_url, redis_conn)
    settings = services.settings
    dialect = db.engine_for(server_url).dialect.name
    customers = store(settings, *(sample_delivery("customer.created", key=f"cust_{i}") for i in range(6)))
    others = store(settings, *_others(20))
    with database_lock_timeout(server_url, server_setting), held_by_another_transaction(server_url, TABLE_LOCK[dialect]):
        took = _timed_drain(services)
        applied = {row(settings, i)["status"] for i in others}
        waiting = [row(settings, i) for i in customers]
    assert took < WITHIN_SECONDS, took
    assert applied == {"processed"}
    assert {(w["status"], w["attempts"]) for w in waiting} == {(DeliveryStatus.PENDING, 0)}
    assert {w["last_error"][:16] for w in waiting} == {"waited on a lock"}
    _as_if_later(server_url)
    jobs.drain(services)
    assert {row(settings, i)["status"] for i in customers} == {"processed"}


@pytest.mark.usefixtures("whole_drains")
def test_database_blips_take_back_their_attempts_and_never_make_rows_be_claimed_alone(database_url, redis_conn):
    """Three passing database errors in a row (a table gone for a moment: PostgreSQL and SQLite
    both call that passing), then the database is back: the rows are claimed together again."""
    services = _services(database_url, redis_conn)
    settings = services.settings
    ids = store(settings, *_others(4))
    engine = db.engine_for(database_url)
    for _ in range(3):
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE partners RENAME TO partners_away"))
        try:
            jobs.drain(services)  # a Retry: the rows are let go of
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE partners_away RENAME TO partners"))
        assert {(row(settings, i)["status"], row(settings, i)["attempts"]) for i in ids} == {(DeliveryStatus.PENDING, 0)}
    # All four are claimed together, not one at a time.
    inbox = Inbox(engine)
    assert sorted(e.id for e in inbox.claim()) == sorted(ids)
    inbox.record_errors(ids, "let go of by the test")  # that claim's attempt taken back too
    jobs.drain(services)
    assert {(row(settings, i)["status"], row(settings, i)["attempts"]) for i in ids} == {("processed", 1)}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_web_answers_503_within_the_lock_wait_when_the_inbox_is_locked(kind, request, tmp_path, redis_conn):
    from app import create_app
    from sync.settings import Settings

    url = empty_database(kind, request, tmp_path)
    app = create_app(Settings(webhook_secrets=("whsec_current",), database_url=url,
                              redis_url=REDIS_URL, mappings_dir=MAPPINGS))
    body, headers = signed(sample_delivery("partner.created"))
    # SQLite: another connection holds the database's write lock; PostgreSQL: the inbox table.
    holding = ("INSERT INTO partners (partner_id) VALUES ('holder')" if kind == "sqlite"
               else "LOCK TABLE webhook_events IN EXCLUSIVE MODE")
    with held_by_another_transaction(url, holding):
        started = time.monotonic()
        response = app.test_client().post("/webhooks/partnero", data=body, headers=headers)
        took = time.monotonic() - started
    assert response.status_code == 503
    assert took < 5, took  # Partnero's deadline; the lock lasts up to a minute
    # Partnero's retry, once the lock is gone, is stored.
    assert app.test_client().post("/webhooks/partnero", data=body, headers=headers).status_code == 202


@pytest.mark.parametrize("server", ["pg_url", "mariadb_url"])
def test_statements_wait_on_another_sessions_table_lock_only_as_long_as_the_engine_says(server, request):
    url = request.getfixturevalue(server)
    engine = db.make_engine(url, lock_timeout=1)
    try:
        dialect = engine.dialect.name
        with held_by_another_transaction(url, TABLE_LOCK[dialect]), pytest.raises(sa.exc.SQLAlchemyError) as raised:
            started = time.monotonic()
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT count(*) FROM customers")).scalar()
        took = time.monotonic() - started
        assert db.waited_on_lock(raised.value) and db.is_transient(raised.value), raised.value
        assert 0.9 <= took < 5, took
    finally:
        engine.dispose()


#: Where the blip strikes: the first claim, or the second batch's first write.
BLIPS = {"claim": ("SELECT WEBHOOK_EVENTS.ID, WEBHOOK_EVENTS.ATTEMPTS", 1), "write": ("INSERT INTO PARTNERS", 2)}


@pytest.mark.usefixtures("whole_drains")
@pytest.mark.parametrize("where", sorted(BLIPS))
def test_a_blip_costs_one_try_not_a_backoff(pg_url, redis_conn, monkeypatch, where):
    """Another session terminates the worker's backend as it claims, or as it writes its second
    batch (a lost connection): the rows are let go of without a charge and the drain claims again
    at once."""
    empty_tables(pg_url)
    monkeypatch.setattr(jobs, "CLAIM_BATCH", 5)
    services = _services(pg_url, redis_conn)
    settings = services.settings
    ids = store(settings, *_others(12))
    engine, killer = db.engine_for(pg_url), db.make_engine(pg_url)
    writes = []
    starts, nth = BLIPS[where]

    def blip(conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith(starts):
            writes.append(statement)
            if len(writes) == nth:
                pid = conn.connection.dbapi_connection.info.backend_pid
                with killer.connect() as other:
                    assert other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    sa.event.listen(engine, "before_cursor_execute", blip)
    try:
        outcome = jobs.drain(services)
    finally:
        sa.event.remove(engine, "before_cursor_execute", blip)
        killer.dispose()
    assert len(writes) > nth  # the statement the blip cut short was run again
    assert outcome == "12 processed, 0 ignored, 0 failed"  # no retry to wait for
    assert {(row(settings, i)["status"], row(settings, i)["attempts"]) for i in ids} == {("processed", 1)}
