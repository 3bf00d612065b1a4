"""The SQL engine (one per process, safe across forks), the shared ``metadata`` of the fixed tables,
and the statements every dialect needs spelled differently."""

from __future__ import annotations

import os
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.errors import TransientError

metadata = sa.MetaData()

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` with the settings this service relies on."""
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Many threads share one file: wait for the writer instead of failing at once.
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif url.startswith("postgresql"):
        # A database that does not answer must fail the request (503) well inside Partnero's
        # five seconds, not hang it.
        kwargs["connect_args"] = {"connect_timeout": 3}
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 10
    if url.startswith("mysql"):
        kwargs["connect_args"] = {"connect_timeout": 3, "charset": "utf8mb4"}
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = sa.create_engine(url, **kwargs)
    # A forked child (an RQ work horse, a gunicorn worker) must open its own connections and
    # leave the parent's alone.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    if url.startswith("sqlite"):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # Take the write lock when a transaction begins, not at its first write: two workers
        # that read a record and then write it must take turns, as row locks make them elsewhere.
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def engine_for(url: str) -> Engine:
    """The engine of this process for ``url``, made on first use."""
    engine = _engines.get(url)
    if engine is None:
        with _lock:
            engine = _engines.get(url)
            if engine is None:
                engine = _engines[url] = make_engine(url)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # pysqlite's own transaction handling would BEGIN lazily; we BEGIN IMMEDIATE ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers (health checks, the sweeper) run beside the writer; FULL sync keeps every
    # acknowledged delivery on disk.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def insert_ignore(conn: Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert ``rows``, skipping those whose unique key is already there, on every dialect."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        conn.execute(insert(table).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        conn.execute(insert(table).on_conflict_do_nothing(), rows)
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        # Not INSERT IGNORE: that would also turn truncated values into warnings.
        pk = next(iter(table.primary_key.columns))
        stmt = insert(table)
        conn.execute(stmt.on_duplicate_key_update({pk.name: table.c[pk.name]}), rows)
    else:
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(table.insert().values(row))
            except sa.exc.IntegrityError:
                pass


def chunks(items: list, size: int):
    """``items`` in slices of at most ``size`` (for IN lists of bounded length)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_transient(exc: BaseException) -> bool:
    """Whether a database error means "try again later" (the server is away or busy)."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return isinstance(exc, sa.exc.TimeoutError | ConnectionError | TimeoutError)
