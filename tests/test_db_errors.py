"""One classifier for database errors: SQLite, PostgreSQL and MariaDB put the same cause on the same side.

Passing (try again later): a lost connection, a lock wait or deadlock, a schema that lags the
mappings. About the data (the delivery fails, once): a value the column cannot hold.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from sync.store import db
from sync.store.inbox import webhook_events
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


MARKER = "private-marker-4711"


def test_an_errors_text_never_carries_the_statements_values(warehouse_url):
    engine = db.engine_for(warehouse_url)
    twice = "INSERT INTO partners (partner_id, email) VALUES ('same-id', :email)"
    with engine.begin() as conn:
        conn.execute(sa.text(twice), {"email": "first"})
    error = _error(engine, twice, {"email": MARKER})
    assert MARKER not in str(error)  # [SQL parameters hidden due to hide_parameters=True]
    assert "unique constraint" in db.describe_error(error).lower()


def test_what_a_dbas_check_constraint_or_trigger_says_about_the_row_is_not_repeated(pg_url):
    """PostgreSQL's DETAIL for a CHECK violation quotes the failing row; a trigger's RAISE says
    whatever it was written to say. Only the kind of error, its code and names are described."""
    engine = db.engine_for(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM partners"))
        conn.execute(sa.text("ALTER TABLE partners ADD CONSTRAINT dba_no_markers "
                             "CHECK (email NOT LIKE '%marker%')"))
        conn.execute(sa.text("CREATE FUNCTION dba_audit() RETURNS trigger AS $$ BEGIN "
                             "IF NEW.partner_id = 'audited' THEN RAISE EXCEPTION 'audit refused %', row_to_json(NEW); "
                             "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text("CREATE TRIGGER dba_audit BEFORE INSERT ON partners FOR EACH ROW EXECUTE FUNCTION dba_audit()"))
    try:
        insert = "INSERT INTO partners (partner_id, email) VALUES (:id, :email)"
        checked = _error(engine, insert, {"id": "p1", "email": MARKER})
        assert MARKER in str(checked.orig)  # "Failing row contains (p1, private-marker-4711, …)"
        assert db.describe_error(checked) == ('a check constraint refused the row (SQLSTATE 23514), '
                                              'table "partners", constraint "dba_no_markers"')
        raised = _error(engine, insert, {"id": "audited", "email": "x" + MARKER[8:]})
        assert MARKER[8:] in str(raised.orig).splitlines()[0]  # the first line quotes the row
        assert db.describe_error(raised) == "a trigger or function raised an error (SQLSTATE P0001)"
        assert MARKER[8:] not in db.explain(raised)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER dba_audit ON partners"))
            conn.execute(sa.text("DROP FUNCTION dba_audit()"))
            conn.execute(sa.text("ALTER TABLE partners DROP CONSTRAINT dba_no_markers"))


def test_what_a_mariadb_trigger_signals_about_the_row_is_not_repeated(mariadb_url):
    engine = db.engine_for(mariadb_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM partners"))
        conn.execute(sa.text("CREATE TRIGGER dba_audit BEFORE INSERT ON partners FOR EACH ROW BEGIN "
                             "DECLARE message VARCHAR(255); IF NEW.partner_id = 'audited' THEN "
                             "SET message = CONCAT('audit refused ', NEW.email); "
                             "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = message; END IF; END"))
    try:
        insert = "INSERT INTO partners (partner_id, email) VALUES (:id, :email)"
        raised = _error(engine, insert, {"id": "audited", "email": MARKER})
        assert MARKER in str(raised.orig)
        assert db.describe_error(raised) == "a trigger or procedure signalled an error (MySQL error 1644)"
        with engine.begin() as conn:
            conn.execute(sa.text(insert), {"id": "twice", "email": "a"})
        duplicate = _error(engine, "INSERT INTO partners (partner_id) VALUES (:id)", {"id": "twice"})
        assert "-twice'" in str(duplicate.orig)  # Duplicate entry 'default-twice' for key 'PRIMARY'
        assert db.describe_error(duplicate) == "a unique constraint refused the row (MySQL error 1062)"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER dba_audit"))


def test_a_lagging_schema_is_described_by_the_names_missing(warehouse_url):
    engine = db.engine_for(warehouse_url)
    column = db.describe_error(_error(engine, "SELECT not_there_yet FROM partners"))
    table = db.describe_error(_error(engine, "SELECT 1 FROM table_not_there_yet"))
    assert "not_there_yet" in column and "table_not_there_yet" in table, (column, table)
