"""End to end: a delivery's values stay in the database, also when the database refuses them.

Real processes (the Procfile's web and worker on PostgreSQL and Redis), deliveries carrying a
marker in every field, and real database errors while they are applied: a CHECK constraint a DBA
added (PostgreSQL's DETAIL quotes the failing row), an audit trigger that RAISEs with the row, and
a DBA's lock time-out met until the retries run out (the job goes to RQ's failed registry with
its traceback). Then every Redis key and value, every process's log and the dashboard's job page
in a browser are searched for the marker.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import uuid
import zlib

import pytest
import redis
import sqlalchemy as sa
from rq import Queue
from rq.registry import FailedJobRegistry
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sync.partnero.samples import sample_delivery
from sync.store import db
from sync.worker.queues import QUEUE_NAME, RESULT_TTL
from tests.conftest import postgres_database, signed
from tests.ops_helpers import AUTH
from tests.test_dashboard import HOSTILE, fail_with
from tests.test_ops_browser import browser  # noqa: F401 - the module's headless Chromium
from tests.test_processes import ROOT, free_port, get, post, procfile, service_environment, start, wait_for

#: In every value of the deliveries; lower case, as mappings lower-case e-mail addresses.
VALUE = f"zq7value{uuid.uuid4().hex[:8]}"
#: In the record ids, which the logs never name either (the inbox id finds a delivery in /ops).
ID = f"zq7id{uuid.uuid4().hex[:8]}"
#: Markup in a name: were it shown unescaped, it would run.
MARKUP = f'<img src=x onerror="document.title=\'pwned\'">{VALUE}'


@pytest.fixture
def database() -> str:
    """A database of its own with what a DBA added: a CHECK (no markup in partners' names), an
    audit trigger on customers that refuses with the row, a slow audit of updated partners (ids
    ending in ``u``), and a statement time-out for every session that the slow audit runs into."""
    name = f"partnero_privacy_{os.getpid()}"
    generator = postgres_database(name)
    url = next(generator)
    with db.engine_for(url).begin() as conn:
        conn.execute(sa.text("ALTER TABLE partners ADD CONSTRAINT no_markup_in_names "
                             "CHECK (position('<' in first_name) = 0)"))
        conn.execute(sa.text("CREATE FUNCTION audit_customers() RETURNS trigger AS $$ BEGIN "
                             "RAISE EXCEPTION 'audit refused customer %: %', NEW.customer_key, row_to_json(NEW); "
                             "END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text("CREATE TRIGGER audit_customers BEFORE INSERT OR UPDATE ON customers "
                             "FOR EACH ROW EXECUTE FUNCTION audit_customers()"))
        conn.execute(sa.text("CREATE FUNCTION slow_partner_audit() RETURNS trigger AS $$ BEGIN "
                             "IF NEW.partner_id LIKE '%u' THEN PERFORM pg_sleep(5); END IF; RETURN NEW; "
                             "END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text("CREATE TRIGGER slow_partner_audit BEFORE INSERT OR UPDATE ON partners "
                             "FOR EACH ROW EXECUTE FUNCTION slow_partner_audit()"))
        conn.execute(sa.text(f"ALTER DATABASE {name} SET statement_timeout = '2s'"))
    db.engine_for(url).dispose()
    yield url
    next(generator, None)  # dropped


def marked(event: str, record_id: str) -> dict:
    """A sample delivery with the marker in every text (its record id: ``record_id``); times stay
    times, so the delivery reaches the database."""
    document = sample_delivery(event)

    def mark(value, name: str):
        if isinstance(value, dict):
            return {k: mark(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v, name) for v in value]
        if isinstance(value, str) and not name.endswith("_at"):
            return f"{VALUE}-{name}"
        return value

    document["data"] = mark(document["data"], "")
    document["data"].update({"name": MARKUP, "email": f"{VALUE}@example.com"})
    document["data"]["key" if event.startswith("customer") else "id"] = record_id
    return document


def readings(raw: bytes) -> list[bytes]:
    """``raw`` and what RQ may have made of a text: zlib (job data, exc_info), base64 (results)."""
    found = [raw]
    for decode in (zlib.decompress, base64.b64decode, lambda b: zlib.decompress(base64.b64decode(b))):
        try:
            found.append(decode(raw))
        except Exception:  # noqa: BLE001 - not that encoding
            pass
    return found


def redis_contents(connection: redis.Redis) -> list[bytes]:
    """Every key of the test's Redis database and every value in it, of every type."""
    contents = []
    for key in connection.scan_iter(count=1000):
        contents.append(key)
        kind = connection.type(key).decode()
        if kind == "string":
            contents.append(connection.get(key))
        elif kind == "hash":
            for field, value in connection.hgetall(key).items():
                contents += [field, value]
        elif kind == "list":
            contents += connection.lrange(key, 0, -1)
        elif kind == "set":
            contents += list(connection.smembers(key))
        elif kind == "zset":
            contents += [member for member, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in connection.xrange(key):
                for field, value in fields.items():
                    contents += [field, value]
        else:
            raise AssertionError(f"{key!r}: a Redis type this test does not read ({kind})")
    return [reading for raw in contents if raw is not None for reading in readings(raw)]


def finish(process: subprocess.Popen) -> str:
    """SIGTERM, and the process's output (whether it stops cleanly is test_processes' concern)."""
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output.decode("utf-8", "replace")


def inbox(url: str) -> dict[str, tuple[str, str | None]]:
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT event_type, status, last_error FROM webhook_events ORDER BY id"))
        return {event: (status, error) for event, status, error in rows}


def test_a_deliverys_values_stay_in_the_database(database, redis_server_url, redis_conn, browser, tmp_path):  # noqa: F811
    # The worker retries twice, a second apart, before a job fails (instead of hours of retries).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text("import sync.core.backoff\nsync.core.backoff.DELIVERY_DELAYS = (1, 1)\n")
    port = free_port()
    operator = base64.b64decode(AUTH["Authorization"].split()[1]).decode().split(":", 1)
    env = service_environment(database, redis_server_url, port, RQ_DASHBOARD_USERNAME=operator[0],
                              RQ_DASHBOARD_PASSWORD=operator[1], LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    web = start(procfile()["web"], env, cwd=tmp_path)
    worker = start(procfile()["worker"], {**env, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}"}, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")

        # The CHECK refuses the partner, the audit trigger the customer: each fails alone.
        for document in (marked("partner.created", ID), marked("customer.created", f"{ID}c")):
            assert post(f"{base}/webhooks/partnero", *signed(document))[0] == 202
        wait_for(lambda: [s for s, _ in inbox(database).values()] == ["failed", "failed"], 60,
                 what="both deliveries to fail")

        # A write that runs into the database's statement time-out (passing: retried) every time,
        # until the retries run out. (A lock wait would not do: a delivery waiting on a lock waits
        # alone and never fails its job.)
        failed = FailedJobRegistry(QUEUE_NAME, connection=redis_conn)
        assert post(f"{base}/webhooks/partnero", *signed(marked("partner.updated", f"{ID}u")))[0] == 202
        [job_id] = wait_for(lambda: failed.get_job_ids(), 90, what="a job in RQ's failed registry")

        # A job whose error's text is markup, for the page's rendering below.
        hostile = Queue(QUEUE_NAME, connection=redis_conn).enqueue(fail_with, HOSTILE)
        wait_for(lambda: hostile.id in failed.get_job_ids(), 30, what="the job with markup to fail")

        # The dashboard's job pages, in a browser, as the operator sees them.
        shown = {}
        for job in (job_id, hostile.id):
            browser.get(f"{base}/rq/0/view/job/{job}")
            WebDriverWait(browser, 20).until(
                lambda driver: driver.find_elements(By.CSS_SELECTOR, "#job-data pre.exc_info"))
            shown[job] = browser.find_element(By.CSS_SELECTOR, "#job-data").text
            assert browser.find_elements(By.CSS_SELECTOR, "#job-data img") == []
            assert browser.title != "pwned"
            assert VALUE not in browser.page_source and ID not in browser.page_source
    finally:
        web_output, worker_output = finish(web), finish(worker)

    assert "still failing after 2 retries" in shown[job_id] and "SQLSTATE 57014" in shown[job_id]
    assert HOSTILE in shown[hostile.id]  # shown as the text it is

    # What a person reads about the failures: the kind of error and names, not the row.
    reasons = inbox(database)
    assert reasons["partner.created"] == ("failed", "database refused the write: a check constraint refused the "
                                          'row (SQLSTATE 23514), table "partners", constraint "no_markup_in_names"')
    assert reasons["customer.created"] == ("failed", "database refused the write: a trigger or function raised "
                                           "an error (SQLSTATE P0001)")
    # (Left pending: a passing error never fails a delivery.)
    assert VALUE not in reasons["partner.updated"][1] and ID not in reasons["partner.updated"][1]

    # RQ keeps the failed job a week, and a finished one a day, not RQ's year and 500 seconds.
    assert 6 * 24 * 3600 < redis_conn.ttl(f"rq:job:{job_id}") <= 7 * 24 * 3600
    finished = Queue(QUEUE_NAME, connection=redis_conn).finished_job_registry.get_job_ids()
    assert finished and all(0 < redis_conn.ttl(f"rq:job:{j}") <= RESULT_TTL for j in finished)

    contents = redis_contents(redis_conn)
    assert any(b"still failing after 2 retries" in c for c in contents)  # the scan reads exc_info
    assert not [c for c in contents if VALUE.encode() in c or ID.encode() in c]

    assert '"level": "ERROR"' in worker_output and "delivery failed" in worker_output
    for name, output in (("web", web_output), ("worker", worker_output)):
        assert VALUE not in output, name
        assert ID not in output, name
        assert "[parameters" not in output and "DETAIL" not in output, name
