"""The fixed tables under versioned migrations: built as the code defines them, adopted when made
before migrations, and migrated by several processes at once without a collision."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync.store import db, schema
from sync.store.inbox import Delivery, Inbox
from tests.conftest import MAPPINGS, mariadb_database, postgres_database

FRESH_DB = f"partnero_sync_schema_{os.getpid()}"
BIN = Path(sys.executable).parent


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def empty_url(request, tmp_path) -> Iterator[str]:
    yield from _empty_database(request.param, tmp_path)


@pytest.fixture(params=["postgresql", "mariadb"])
def empty_server_url(request, tmp_path) -> Iterator[str]:
    yield from _empty_database(request.param, tmp_path)


def _empty_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``kind``, made for one test and dropped after it."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    elif kind == "postgresql":
        yield from postgres_database(FRESH_DB, with_schema=False)
    else:
        yield from mariadb_database(FRESH_DB, with_schema=False)


def test_the_migrations_build_exactly_the_tables_the_code_defines(empty_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.engine_for(empty_url)
    lines = schema.migrate(engine)
    assert "created table webhook_events" in lines
    assert f"fixed tables migrated from nothing to {schema.head_revision()}" in lines
    assert schema.current_revision(engine) == schema.head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE})
        assert compare_metadata(context, schema.metadata) == []
    assert schema.migrate(engine) == []  # again: nothing to do


def test_a_database_made_before_migrations_is_adopted_and_upgraded(empty_url):
    """Deployed databases were made by create_all, with no version table: they are the baseline."""
    from alembic import command

    engine = db.engine_for(empty_url)
    with engine.connect() as conn:
        command.upgrade(schema._config(conn), schema.BASELINE)
        conn.commit()
        conn.execute(sa.text(
            "INSERT INTO webhook_events (fingerprint, event_type, body, received_at, status, attempts) "
            "VALUES ('f1', 'partner.created', :body, :at, 'processed', 1)"
        ), {"body": b'{"event": "partner.created"}', "at": "2026-03-14 10:15:31"})
        conn.execute(sa.text(f"DROP TABLE {schema.VERSION_TABLE}"))
        conn.commit()
    assert schema.current_revision(engine) is None

    lines = schema.migrate(engine)
    # Only the tables later migrations add are new.
    assert lines == ["created table backfill_runs", "created table crm_bulk_jobs", "created table notifications",
                     "created table operator_alert_sender",
                     "created table operator_alerts", "created table ops_history", "created table org_checks",
                     f"fixed tables migrated from {schema.BASELINE} to {schema.head_revision()}"]
    rows = Inbox(engine).deliveries()
    (old,) = list(rows)
    assert (old.fingerprint, old.status, old.entity_id) == ("f1", "processed", None)
    Inbox(engine).store_many([Delivery(b'{"event": "partner.updated"}', "partner.updated", "pending", "ptn_1")])
    assert [e.entity_id for e in Inbox(engine).deliveries()] == [None, "ptn_1"]


def test_the_reserved_table_names_come_from_the_schema():
    assert {"webhook_events", "commission_entries", "crm_outbox", "crm_commission_changes", "backfill_runs",
            "org_checks", "crm_bulk_jobs", "operator_alerts", "operator_alert_sender", "ops_history",
            "notifications", schema.VERSION_TABLE, "partner_commissions"} == schema.RESERVED_TABLES


def test_two_migrations_at_once_take_turns(empty_server_url):
    """A release step and workers starting together: each waits for the lock, none collides."""
    env = {**os.environ, "DATABASE_URL": empty_server_url, "MAPPINGS_DIR": str(MAPPINGS), "LOG_FORMAT": "text"}
    processes = [
        subprocess.Popen([str(BIN / "partnero-sync"), "migrate"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    # Exactly one of them did the work; the others found it done.
    assert sum("created table webhook_events" in out for out in outputs) == 1, outputs
    assert sum("created table partners" in out for out in outputs) == 1, outputs
    engine = db.engine_for(empty_server_url)
    assert schema.current_revision(engine) == schema.head_revision()
    assert {"webhook_events", "partners", "transactions"} <= set(sa.inspect(engine).get_table_names())


def test_the_ledger_migration_keeps_old_entries_meaningful(empty_url):
    """A deployed ledger holds one commission per reward and one reversal per refund: after the
    upgrade they read as before (owed, rejected, refunded), and newer states adjust from them."""
    from datetime import datetime, timezone
    from decimal import Decimal

    from alembic import command

    from sync.store import ledger
    from sync.store.sqltypes import Money
    from tests.conftest import migrate
    from tests.warehouse_helpers import Pipe, envelope

    engine = db.engine_for(empty_url)
    old = sa.table("commission_entries", *(sa.column(c) for c in (
        "entry_type", "transaction_key", "reward_ref", "partner_id", "currency", "reward_status", "recorded_at",
        "event_id")), sa.column("amount", Money()))
    at = datetime(2026, 3, 14, tzinfo=timezone.utc).replace(tzinfo=None)
    rows = [("commission", "t1", "ptn_a#1", "ptn_a", "44.7", "review_period"),
            ("reversal", "t1", "ptn_a#1", "ptn_a", "-44.7", "review_period"),
            ("commission", "t2", "ptn_b#1", "ptn_b", "10", "ok"),
            ("commission", "t3", "ptn_b#1", "ptn_b", "0.000001", "rejected"),
            ("commission", "t4", "ptn_b#1", "ptn_b", "1.5", "OK "),
            ("commission", "t5", "ptn_b#1", "ptn_b", "2", None)]
    with engine.connect() as conn:
        command.upgrade(schema._config(conn), "0005")  # the revision before the ledger's
        conn.execute(old.insert(), [
            {"entry_type": t, "transaction_key": k, "reward_ref": r, "partner_id": p, "amount": Decimal(a),
             "currency": "USD", "reward_status": s, "recorded_at": at, "event_id": 7} for t, k, r, p, a, s in rows])
        conn.commit()

    assert schema.migrate(engine) == ["created table backfill_runs", "created table crm_bulk_jobs",
                                      "created table notifications", "created table operator_alert_sender",
                                      "created table operator_alerts",
                                      "created table ops_history", "created table org_checks",
                                      f"fixed tables migrated from 0005 to {schema.head_revision()}"]
    migrate(empty_url)  # and the mapped tables, to deliver into
    pipe = Pipe(empty_url)
    assert [(e["transaction_key"], e["seq"], e["entry_type"], e["amount"], e["standing"], e["is_currency"])
            for e in pipe.entries()] == [
        ("t1", 1, "commission", Decimal("44.7"), "pending", True),
        ("t1", 2, "reversal", Decimal("-44.7"), "pending", True),
        ("t2", 1, "commission", Decimal("10"), "approved", True),
        ("t3", 1, "commission", Decimal("0.000001"), "rejected", True),
        ("t4", 1, "commission", Decimal("1.5"), "approved", True),
        ("t5", 1, "commission", Decimal("2"), "pending", True),
        ("t1", 3, "reversal", Decimal("44.7"), "reversed", True),  # the refund's other half
    ]
    zero = Decimal(0)
    assert pipe.totals() == {
        ("ptn_a", "USD", True): {"approved": zero, "pending": zero, "rejected": zero, "reversed": Decimal("44.7"),
                                 "owed": zero},
        ("ptn_b", "USD", True): {"approved": Decimal("11.5"), "pending": Decimal("2"), "rejected": Decimal("0.000001"),
                                 "reversed": zero, "owed": Decimal("13.5")},
    }
    # A newer state of an old sale adjusts from what was booked: no second booking.
    reward = {"partner": "ptn_b", "amount": 10, "amount_units": "USD", "status": "rejected"}
    pipe.deliver(envelope("transaction.updated", "2026-03-20T00:00:00Z", key="t2", rewards=[reward]))
    with engine.connect() as conn:
        [totals] = ledger.totals(conn, ["ptn_b"])
    assert (totals.approved, totals.rejected, totals.owed) == (Decimal("1.5"), Decimal("10.000001"), Decimal("3.5"))
    assert [(e["seq"], e["entry_type"], e["amount"]) for e in pipe.entries() if e["transaction_key"] == "t2"] == [
        (1, "commission", Decimal("10")), (2, "adjustment", Decimal("-10")), (3, "adjustment", Decimal("10"))]
