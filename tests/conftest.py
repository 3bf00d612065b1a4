"""Fixtures: real Redis (an empty db index, flushed around each test), real PostgreSQL, SQLite.

Without Redis or PostgreSQL the tests that need them are skipped, except under CI=true, where
they fail: CI must never pass by skipping.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from werkzeug.serving import make_server

from sync.core.signature import sign
from sync.ops import metrics
from sync.settings import Settings, normalize_database_url
from sync.store import db

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Named for this test run, so two runs on one machine never truncate each other's tables.
PG_TEST_DB = f"partnero_sync_test_{os.getpid()}"
MARIADB_ADMIN_URL = os.environ.get("TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
MARIADB_TEST_DB = f"partnero_sync_test_{os.getpid()}"
SECRETS = ("whsec_current", "whsec_previous")
#: Nothing listens here: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
DEAD_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def _unavailable(what: str, exc: Exception):
    message = f"{what} is not available: {exc}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a test that needs it must fail, not skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def redis_conn(redis_server_url) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def _server_database(server: str, admin_url: str, name: str, create: str, drop: str, with_schema: bool = True,
                     **engine_options):
    """A fresh database on a real server (with the schema, unless told not to); dropped at the end."""
    admin_url = normalize_database_url(admin_url)
    try:
        admin = sa.create_engine(admin_url, connect_args={"connect_timeout": 3}, **engine_options)
        with admin.begin() as conn:
            conn.execute(sa.text(drop))
            conn.execute(sa.text(create))
    except sa.exc.OperationalError as exc:
        _unavailable(server, exc)
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    if with_schema:
        migrate(url)
    yield url
    db.engine_for(url).dispose()
    with admin.begin() as conn:
        conn.execute(sa.text(drop))
    admin.dispose()


def postgres_database(name: str, with_schema: bool = True) -> Iterator[str]:
    yield from _server_database(
        "PostgreSQL", PG_ADMIN_URL, name, f"CREATE DATABASE {name}", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        with_schema, isolation_level="AUTOCOMMIT",
    )


def mariadb_database(name: str, with_schema: bool = True) -> Iterator[str]:
    yield from _server_database(
        "MariaDB", MARIADB_ADMIN_URL, name, f"CREATE DATABASE {name} CHARACTER SET utf8mb4",
        f"DROP DATABASE IF EXISTS {name}", with_schema,
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    yield from postgres_database(PG_TEST_DB)


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    yield from mariadb_database(MARIADB_TEST_DB)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def warehouse_url(request, tmp_path) -> str:
    """Like database_url, and on MariaDB as well: the warehouse must not be PostgreSQL-only."""
    return empty_database(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test that takes this runs on SQLite and on PostgreSQL, on empty tables."""
    return empty_database(request.param, request, tmp_path)


def empty_database(kind: str, request, tmp_path) -> str:
    """The URL of a migrated database of ``kind`` (sqlite, postgresql, mariadb) with empty tables:
    a new SQLite file in ``tmp_path``, or the session's server database emptied."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[kind])
    empty_tables(url)
    return url


def migrate(url: str) -> None:
    """The whole schema: inbox, ledger and the tables of the default mappings."""
    from sync.mapping import load_mappings
    from sync.store import schema
    from sync.store.warehouse import Warehouse

    schema.migrate(db.engine_for(url), Warehouse(load_mappings(MAPPINGS)))


def empty_tables(url: str) -> None:
    engine = db.engine_for(url)
    from sync.store.schema import VERSION_TABLE

    names = [n for n in sa.inspect(engine).get_table_names() if n != VERSION_TABLE]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(sa.text(f"DELETE FROM {name}"))


ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"


@pytest.fixture
def settings(database_url, redis_server_url) -> Settings:
    return Settings(
        webhook_secrets=SECRETS, database_url=database_url, redis_url=redis_server_url, mappings_dir=MAPPINGS
    )


@contextmanager
def held_by_another_transaction(url: str, statement: str) -> Iterator[None]:
    """While the block runs, another transaction (on a thread, with an engine of its own) has run
    ``statement`` and holds the locks it took; it commits once the block is over."""
    engine = db.make_engine(url)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        thread.join()
        engine.dispose()


@pytest.fixture
def whole_drains(monkeypatch) -> None:
    """A drain run in this process goes on until nothing is pending, never handing over to a fresh
    wake-up half-way (``sync.worker.jobs.SLICE_SECONDS`` made an hour): for tests that count wake-up jobs,
    which a first job slowed past its slice (a cold process) would otherwise double."""
    from sync.worker import jobs

    monkeypatch.setattr(jobs, "SLICE_SECONDS", 3600)


@pytest.fixture
def app(settings, redis_conn):
    from app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def _no_leftover_metrics():
    yield
    # Nothing a test counted may reach the next test's Redis.
    metrics.recorder.clear()


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app on a real threaded HTTP server on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


#: How the stand-in resolves the relationships the shipped mappings use.
RELATIONSHIPS = {
    ("Account", "Partnero_Partner__r"): ("Contact", "Partnero_Partner_Id__c"),
    ("Partnero_Transaction__c", "Partnero_Customer__r"): ("Account", "Partnero_Customer_Key__c"),
    ("Partnero_Transaction__c", "Partnero_Partner__r"): ("Contact", "Partnero_Partner_Id__c"),
}


@pytest.fixture
def fake(monkeypatch):
    """The HTTPS Salesforce stand-in with the objects the shipped mappings write, trusted by this
    process (``REQUESTS_CA_BUNDLE``); see ``salesforce_env`` for a child process."""
    from tests.fakes.salesforce import FakeSalesforce

    with FakeSalesforce(relationships=RELATIONSHIPS) as fake:
        fake.define_object("Partnero_Transaction__c")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
        yield fake


@pytest.fixture
def fresh_org(monkeypatch):
    """The stand-in as a fresh org: only its standard objects, none of the mappings' custom
    objects, fields or relationships (what ``crm setup`` starts from); trusted by this process."""
    from tests.fakes.salesforce import FakeSalesforce

    with FakeSalesforce() as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
        yield fake


def salesforce_env(fake) -> dict[str, str]:
    """The variables of a password login to the stand-in, for a worker started as a process."""
    return {"SALESFORCE_USERNAME": fake.username, "SALESFORCE_PASSWORD": fake.password,
            "SALESFORCE_SECURITY_TOKEN": fake.security_token, "SALESFORCE_DOMAIN": fake.login_domain,
            "REQUESTS_CA_BUNDLE": fake.ca_bundle}


@pytest.fixture
def partnero_api(monkeypatch):
    """The HTTPS stand-in for Partnero's REST API, trusted by this process (``REQUESTS_CA_BUNDLE``:
    the test CA every stand-in shares, so the Salesforce one is trusted too); see ``partnero_env``
    for a child process."""
    from tests.fakes.partnero import FakePartnero

    with FakePartnero() as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
        yield fake


@pytest.fixture
def catcher(monkeypatch):
    """The HTTPS stand-in for an incoming webhook (``tests/fakes/catcher.py``: Slack's, Teams', any
    JSON endpoint), trusted by this process through the test CA every stand-in shares."""
    from tests.fakes.catcher import Catcher

    with Catcher() as running:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", running.ca_bundle)
        yield running


@pytest.fixture
def program(partnero_api):
    """The stand-in listing the program of ``tests.partnero_helpers`` (``upstream()``)."""
    from tests.partnero_helpers import upstream

    for entity, objects in upstream().items():
        for obj in objects:
            partnero_api.add(entity, obj)
    return partnero_api


def partnero_env(fake) -> dict[str, str]:
    """The variables that point a process started by a test at the Partnero stand-in."""
    return {"PARTNERO_API_KEY": fake.api_key, "PARTNERO_API_URL": fake.url, "REQUESTS_CA_BUNDLE": fake.ca_bundle}


def signed(document: dict | bytes, secret: str = SECRETS[0], header: str = "Signature") -> tuple[bytes, dict]:
    """A body and the headers Partnero would send with it."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return body, {header: sign(body, secret), "Content-Type": "application/json"}


#: The name RQ stores for a wake-up's job: the function ``sync.worker.jobs.drain``.
DRAIN = "sync.worker.jobs.drain"


def wakeups(connection: redis.Redis) -> int:
    """How many wake-ups wait in the deliveries' queue."""
    from rq import Queue

    from sync.worker.queues import QUEUE_NAME

    return sum(1 for job in Queue(QUEUE_NAME, connection=connection).get_jobs() if job.func_name == DRAIN)


def drain_jobs(connection: redis.Redis) -> list:
    """Every wake-up job RQ knows of, whatever its state, oldest first."""
    from rq import Queue
    from rq.job import Job

    from sync.worker.queues import QUEUE_NAME

    queue = Queue(QUEUE_NAME, connection=connection)
    ids = set(queue.get_job_ids())
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                     queue.scheduled_job_registry, queue.deferred_job_registry):
        ids.update(registry.get_job_ids())
    jobs = [job for job in Job.fetch_many(sorted(ids), connection=connection) if job is not None]
    return sorted((job for job in jobs if job.func_name == DRAIN), key=lambda job: job.created_at)
