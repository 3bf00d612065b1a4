"""The fixed tables (inbox, ledger, CRM outbox and its bulk jobs, backfill runs, the org's check, the
alerts, /ops's history, the mappings' notifications) and their versioned migrations.

The tables are defined beside the code that uses them; this module gathers them into one
``metadata`` and brings a database up to date: Alembic's versioned migrations for the fixed
tables (``sync/store/migrations/versions``), then the additive migration of the mapped tables. The
whole migration runs under a database lock, so a release step and several workers starting at
once take turns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# Imported for their tables: each module defines its own on db.metadata.
from sync.store import (  # noqa: F401
    alerts,  # noqa: F401
    bulk_jobs,  # noqa: F401
    db,
    history,  # noqa: F401
    inbox,
    ledger,
    notifications,  # noqa: F401
    org_checks,  # noqa: F401
    outbox,  # noqa: F401
    runs,  # noqa: F401
)

log = logging.getLogger(__name__)

#: Alembic's record of which migration the database is at (named for us: the warehouse database
#: may hold other applications' tables, and their own Alembic).
VERSION_TABLE = "partnero_sync_schema_version"
#: The table (and view) names partnero-sync keeps for itself; a mapping may not use them.
RESERVED_TABLES = frozenset({*db.metadata.tables, VERSION_TABLE, ledger.VIEW})
#: The migration that describes the tables as ``create_all`` made them before migrations existed.
BASELINE = "0001"
#: How long a migration waits for another one to finish (seconds).
LOCK_TIMEOUT = 300
_LOCK_NAME = "partnero-sync-migrate"
_PG_LOCK_KEY = 0x7061_7274  # "part": any constant, the same in every process

metadata = db.metadata


def migrate(engine: Engine, mapped=None) -> list[str]:
    """Bring the database up to date; returns what it did, a line per step.

    Upgrades the fixed tables to the newest migration, then (given the warehouse ``mapped``)
    creates or extends the mapped tables. Safe to run any number of times, and from several
    processes at once.
    """
    lines: list[str] = []
    with engine.connect() as conn, _migration_lock(conn):
        lines += _upgrade(conn)
        conn.commit()
        if mapped is not None:
            lines += mapped.migrate(conn).lines()
            conn.commit()
    return lines


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return _revision(conn)


def head_revision() -> str:
    """The newest migration there is: the one ``migrate`` brings the fixed tables to."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None)).get_current_head()


def _upgrade(conn: Connection) -> list[str]:
    from alembic import command

    before = _revision(conn)
    tables = set(sa.inspect(conn).get_table_names())
    config = _config(conn)
    if before is None and inbox.webhook_events.name in tables:
        # Made by create_all before migrations existed: that is the baseline.
        command.stamp(config, BASELINE)
        before = BASELINE
        log.info("schema: existing tables adopted as migration %s", BASELINE)
    command.upgrade(config, "head")
    after = _revision(conn)
    if after == before:
        return []
    created = [t.name for t in metadata.sorted_tables if t.name not in tables]
    return [f"created table {name}" for name in created] + [
        f"fixed tables migrated from {before or 'nothing'} to {after}"
    ]


def _revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _config(conn: Connection | None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "sync.store:migrations")
    config.attributes["connection"] = conn
    return config


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the database's migration lock on ``conn``; other migrations wait for it."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # For this wait only (LOCAL: until the commit below), then the engine's own again.
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}s'"))
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        conn.commit()  # the lock is the session's: it outlives the transaction
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
            conn.commit()
    elif dialect in ("mysql", "mariadb"):
        got = conn.execute(sa.text("SELECT GET_LOCK(:name, :wait)"), {"name": _LOCK_NAME, "wait": LOCK_TIMEOUT}).scalar()
        if got != 1:
            raise TimeoutError(f"another migration held the lock for more than {LOCK_TIMEOUT}s")
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})
    else:
        # SQLite: every transaction begins IMMEDIATE (sync.store.db), which takes the database's one
        # write lock; each step below runs in such a transaction, and they are idempotent.
        yield
