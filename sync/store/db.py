"""The SQL engine (one per process, safe across forks), the shared ``metadata`` of the fixed tables,
the statements every dialect needs spelled differently, and what a database error means: passing
or not (``is_transient``), and in words a person may be shown (``describe_error``)."""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.core.errors import TransientError, caused_by
from sync.settings import DEFAULT_LOCK_TIMEOUT

metadata = sa.MetaData()

_engines: dict[tuple[str, float], Engine] = {}
_lock = threading.Lock()


def make_engine(url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Engine:
    """A new engine for ``url`` with the settings this service relies on.

    Every statement it runs waits at most ``lock_timeout`` seconds for a lock another session
    holds (a long report, a migration, someone's open transaction), then fails with an error
    ``waited_on_lock`` recognises, whatever the database's own settings say: PostgreSQL's
    ``lock_timeout``, MariaDB's ``innodb_lock_wait_timeout`` (row locks) and ``lock_wait_timeout``
    (table locks), SQLite's busy time-out (its one writer's lock).

    ``hide_parameters``: an error's text never carries the statement's values (a delivery's),
    wherever it goes; ``describe_error`` is what a person is shown of it.
    """
    kwargs: dict[str, object] = {"pool_pre_ping": True, "hide_parameters": True}
    if url.startswith("sqlite"):
        # Many threads share one file: wait for the writer, as long as for any other lock.
        kwargs["connect_args"] = {"timeout": lock_timeout, "check_same_thread": False}
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
    else:
        sa.event.listen(engine, "connect", lambda dbapi, _record: _bound_lock_waits(dbapi, url, lock_timeout))
    return engine


def engine_for(url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Engine:
    """The engine of this process for ``url`` (and ``lock_timeout``), made on first use."""
    key = (url, lock_timeout)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = make_engine(url, lock_timeout)
    return engine


def _bound_lock_waits(dbapi_connection, url: str, seconds: float) -> None:
    """Set a new server connection's longest wait for a lock (see ``make_engine``)."""
    cursor = dbapi_connection.cursor()
    try:
        if url.startswith("postgresql"):
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", (f"{max(1, round(seconds * 1000))}ms",))
        else:  # MariaDB and MySQL count whole seconds
            whole = max(1, math.ceil(seconds))
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s, lock_wait_timeout = %s", (whole, whole))
    finally:
        cursor.close()
    dbapi_connection.commit()  # a setting made in a transaction rolled back would be undone


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


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` that turns a passing database error into ``TransientError`` (with a
    sentence for a person), so callers handle "try again later" one way."""
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        if is_transient(exc):
            raise TransientError(explain(exc)) from exc
        raise


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
    """Whether a database error is passing (try again later) rather than about the data written.

    The one place that decides, the same way on every dialect: a lost or refused connection, a
    deadlock, a lock or statement time-out, a server restarting or read-only for a failover, and a
    schema that lags the mappings (a table or column not there yet) are passing; what the database
    says about a value (too long, out of range, not encodable, a constraint) is not.
    """
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
            return True
        return _transient_cause(exc.orig)
    return isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError | ConnectionError | TimeoutError)


#: PostgreSQL: lock_not_available (a lock_timeout ran out, or NOWAIT).
_PG_LOCK_WAIT = "55P03"
#: MySQL/MariaDB: lock wait timeout exceeded (a row lock, or a table's metadata lock).
_MYSQL_LOCK_WAIT = 1205
#: SQLite: another connection holds the database's write lock.
_SQLITE_LOCKED = re.compile(r"database is locked|database table is locked", re.IGNORECASE)

#: PostgreSQL SQLSTATE classes and codes that are passing.
_PG_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
#: PostgreSQL SQLSTATEs of a schema that lags the mappings (undefined_table, undefined_column).
_PG_SCHEMA_CODES = {"42P01", "42703"}
_PG_TRANSIENT_CODES = {
    _PG_LOCK_WAIT,  # lock_not_available
    "25006",  # read_only_sql_transaction: a failover in progress
    *_PG_SCHEMA_CODES,
}
#: MySQL/MariaDB errors of a schema that lags the mappings (unknown column, no such table).
_MYSQL_SCHEMA_ERRORS = {1054, 1146}
#: MySQL/MariaDB error numbers that are passing.
_MYSQL_TRANSIENT = {
    1040,  # too many connections
    1053,  # server shutdown in progress
    *_MYSQL_SCHEMA_ERRORS,
    _MYSQL_LOCK_WAIT,
    1213,  # deadlock
    1290, 1836,  # read-only server (a failover)
    1317,  # query interrupted
    1927,  # connection killed
    2002, 2003, 2006, 2013, 2055,  # cannot connect, server gone, lost connection
    3024,  # statement time-out
    4031,  # disconnected for inactivity
}
#: SQLite: a schema that lags the mappings.
_SQLITE_SCHEMA = r"no such table|no such column|has no column named"
#: SQLite: busy or locked, I/O trouble, or a schema that lags the mappings.
_SQLITE_TRANSIENT = re.compile(
    _SQLITE_LOCKED.pattern + r"|busy|disk i/o error|unable to open database file"
    r"|database or disk is full|" + _SQLITE_SCHEMA,
    re.IGNORECASE,
)


def _transient_cause(orig: BaseException | None) -> bool:
    if orig is None:
        return False
    module = type(orig).__module__
    if module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None)
        if not sqlstate:  # the connection itself failed (refused, reset, timed out)
            return True
        return sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES
    if module.startswith("pymysql"):
        errno = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
        return errno in _MYSQL_TRANSIENT or errno is None
    if module.startswith("sqlite3"):
        return bool(_SQLITE_TRANSIENT.search(str(orig)))
    return isinstance(orig, ConnectionError | TimeoutError)


def waited_on_lock(exc: BaseException) -> bool:
    """Whether a database error says a statement gave up waiting for a lock another session
    holds (passing, see ``is_transient``): whatever tried it may well go through later, and the
    work that did not need that lock can go on without it."""
    orig = getattr(caused_by(exc, sa.exc.DBAPIError), "orig", None)
    module = type(orig).__module__
    if module.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) == _PG_LOCK_WAIT
    if module.startswith("pymysql"):
        return bool(orig.args) and orig.args[0] == _MYSQL_LOCK_WAIT
    if module.startswith("sqlite3"):
        return _SQLITE_LOCKED.search(str(orig)) is not None
    return False


def lagging_schema(exc: BaseException) -> bool:
    """Whether a database error says a table or column is not there (yet): the schema was never
    made, or lags the mappings, and `partnero-sync migrate` mends it."""
    orig = getattr(exc, "orig", None)
    module = type(orig).__module__
    if module.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) in _PG_SCHEMA_CODES
    if module.startswith("pymysql"):
        return bool(orig.args) and orig.args[0] in _MYSQL_SCHEMA_ERRORS
    if module.startswith("sqlite3"):
        return re.search(_SQLITE_SCHEMA, str(orig), re.IGNORECASE) is not None
    return False


def explain(exc: BaseException) -> str | None:
    """One sentence for a person about the database error ``exc`` is or was caused by; None when
    there is none. Says to migrate when the schema lags; never shows a statement, its parameters
    or a value the database echoed."""
    found = caused_by(exc, sa.exc.SQLAlchemyError)
    if found is None:
        return None
    if lagging_schema(found):
        return f"the database schema is missing or out of date ({describe_error(found)}): run `partnero-sync migrate`"
    if is_transient(found):
        return f"database unavailable: {describe_error(found)}"
    return f"database error: {describe_error(found)}"


#: What the SQLSTATEs a write can meet mean, in words (PostgreSQL's own condition names otherwise).
_PG_SENTENCES = {
    "23505": "a unique constraint refused the row",
    "23514": "a check constraint refused the row",
    "23502": "a not-null constraint refused the row",
    "23503": "a foreign key constraint refused the row",
    "22001": "value too long for its column",
    "22003": "a number out of range for its column",
    "40P01": "deadlock",
    "40001": "serialization failure",
    "55P03": "lock not available (a lock time-out)",
    "57014": "statement cancelled (a statement time-out)",
    "42P01": "a table is missing",
    "42703": "a column is missing",
    "P0001": "a trigger or function raised an error",
}
#: The same for MySQL/MariaDB error numbers (pymysql's ER names otherwise).
_MYSQL_SENTENCES = {
    1062: "a unique constraint refused the row",
    4025: "a check constraint refused the row",
    3819: "a check constraint refused the row",
    1048: "a not-null constraint refused the row",
    1452: "a foreign key constraint refused the row",
    1406: "value too long for its column",
    1264: "a number out of range for its column",
    1366: "a value its column cannot hold",
    1205: "lock wait time-out",
    1213: "deadlock",
    1146: "a table is missing",
    1054: "a column is missing",
    1644: "a trigger or procedure signalled an error",
}


def describe_error(exc: BaseException) -> str:
    """What went wrong with a database, in words for a person: the kind of error, its code (a
    SQLSTATE, a MySQL error number) and the names of the table, column and
    constraint where the database gives them (a missing table's or column's name is read from the
    message: identifier characters only, in the message's known shape).

    The one place a database error becomes text to store, log or show. Never the server's own
    message: PostgreSQL's DETAIL quotes the failing row, MariaDB's "Duplicate entry" quotes the
    value, and a trigger's RAISE or SIGNAL says whatever it was written to say. The exceptions
    are a connection that failed before any statement (libpq's own words name the server, not
    data) and SQLite, whose messages name tables, columns and constraints only.
    """
    cause = getattr(exc, "orig", None) or exc
    module = type(cause).__module__
    if module.startswith("psycopg"):
        return _describe_postgresql(cause)
    if module.startswith("pymysql"):
        return _describe_mysql(cause)
    if module.startswith("sqlite3"):
        return _first_line(cause)
    if module.startswith("redis") or isinstance(
            cause, ConnectionError | TimeoutError | sa.exc.TimeoutError | sa.exc.DisconnectionError):
        return _first_line(cause)  # about reaching a server, not about data
    return type(cause).__name__


def _describe_postgresql(cause: BaseException) -> str:
    sqlstate = getattr(cause, "sqlstate", None)
    if not sqlstate:  # the client's own error: the connection failed, no statement ran
        return _first_line(cause)
    import psycopg.errors

    sentence = _PG_SENTENCES.get(sqlstate) or _words(psycopg.errors.lookup(sqlstate).__name__)
    diag = getattr(cause, "diag", None)
    table, column = getattr(diag, "table_name", None), getattr(diag, "column_name", None)
    if sqlstate in _PG_SCHEMA_CODES:  # the statement's own names: which are missing
        table, column = _missing_names(_PG_MISSING, cause)
    names = [f'{kind} "{name}"' for kind, name in (
        ("table", table), ("column", column), ("constraint", getattr(diag, "constraint_name", None)),
    ) if name]
    return ", ".join([f"{sentence} (SQLSTATE {sqlstate})", *names])


#: Where a lagging schema's error names the missing table or column: the names only are read
#: (identifier characters), from the statement, which mapping files spell.
_PG_MISSING = (
    re.compile(r'^column "(?P<column>[\w$]+)"(?: of relation "(?P<table>[\w$]+)")? does not exist'),
    re.compile(r'^column (?:(?P<table>[\w$]+)\.)?(?P<column>[\w$]+) does not exist'),
    re.compile(r'^relation "(?P<table>[\w$.]+)" does not exist'),
)
_MYSQL_MISSING = (
    re.compile(r"^Unknown column '(?:(?P<table>[\w$]+)\.)?(?P<column>[\w$]+)'"),
    re.compile(r"^Table '(?P<table>[\w$.]+)' doesn't exist"),
)


def _missing_names(patterns: tuple[re.Pattern, ...], cause: BaseException) -> tuple[str | None, str | None]:
    text = str(cause.args[1] if patterns is _MYSQL_MISSING and len(cause.args) > 1 else cause).strip()
    for pattern in patterns:
        found = pattern.match(text)
        if found is not None:
            groups = found.groupdict()
            return groups.get("table"), groups.get("column")
    return None, None


def _describe_mysql(cause: BaseException) -> str:
    errno = cause.args[0] if cause.args and isinstance(cause.args[0], int) else None
    if errno is None:
        return type(cause).__name__
    if errno >= 2000:  # the client's own error (2003: cannot connect): its words name the server
        return _first_line(cause)
    from pymysql.constants import ER

    name = next((n for n in dir(ER) if getattr(ER, n) == errno), None)
    sentence = _MYSQL_SENTENCES.get(errno) or (name.lower().replace("_", " ") if name else type(cause).__name__)
    names = []
    if errno in _MYSQL_SCHEMA_ERRORS:  # the statement's own names: which are missing
        table, column = _missing_names(_MYSQL_MISSING, cause)
        names = [f'{kind} "{name}"' for kind, name in (("table", table), ("column", column)) if name]
    return ", ".join([f"{sentence} (MySQL error {errno})", *names])


def _words(name: str) -> str:
    """``CheckViolation`` -> ``check violation``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def _first_line(cause: BaseException) -> str:
    text = str(cause).strip()
    return (text.splitlines()[0] if text else "")[:300] or type(cause).__name__
