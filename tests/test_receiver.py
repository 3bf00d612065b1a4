"""POST /webhooks/partnero against real Redis and real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from rq import Queue

from app import create_app
from sync.partnero.samples import sample_delivery
from sync.pipeline.sweeper import sweep
from sync.settings import MAX_BODY_BYTES
from sync.store import db
from sync.store.inbox import Inbox, webhook_events
from sync.worker.queues import QUEUE_NAME, JobQueue
from tests.conftest import DEAD_PG_URL, DEAD_REDIS_URL, SECRETS, signed, wakeups

URL = "/webhooks/partnero"


def rows(database_url: str) -> list[dict]:
    with db.engine_for(database_url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(webhook_events).order_by(webhook_events.c.id))]


def test_a_genuine_delivery_is_stored_then_enqueued(client, settings, redis_conn):
    body, headers = signed(sample_delivery("partner.created"))
    response = client.post(URL, data=body, headers=headers)

    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status"] == "queued"
    [row] = rows(settings.database_url)
    assert row["id"] == answer["id"]
    assert row["body"] == body  # the raw bytes, exactly as received
    assert row["event_type"] == "partner.created"
    assert row["status"] == "pending" and row["attempts"] == 0 and row["last_error"] is None
    assert row["fingerprint"] == hashlib.sha256(body).hexdigest()

    # A worker is woken to claim it; the dashboard renders descriptions: no payload text in them.
    [job] = Queue(QUEUE_NAME, connection=redis_conn).get_jobs()
    assert job.func_name == "sync.worker.jobs.drain" and job.args == ()
    assert job.description == "wake-up: claim and apply pending deliveries"


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("header", ["Signature", "X-Partnero-Signature", "signature", "X-PARTNERO-SIGNATURE"])
def test_every_configured_secret_and_both_headers_are_accepted(client, secret, header):
    body, headers = signed(sample_delivery("customer.created"), secret=secret, header=header)
    assert client.post(URL, data=body, headers=headers).status_code == 202


BAD_INPUTS = [
    # (name, body, headers, status, error)
    ("no signature", b'{"event":"partner.created"}', {}, 401, "missing signature"),
    ("empty signature", b'{"event":"partner.created"}', {"Signature": ""}, 401, "malformed signature"),
    ("not hex", b'{"event":"partner.created"}', {"Signature": "g" * 64}, 401, "malformed signature"),
    ("prefixed", b'{"event":"partner.created"}', {"Signature": "sha256=" + "0" * 64}, 401, "malformed signature"),
    ("wrong", b'{"event":"partner.created"}', {"Signature": "0" * 64}, 401, "signature does not match"),
    ("unknown secret", *signed(b'{"event":"partner.created"}', secret="whsec_other"), 401, "signature does not match"),
    ("not json", *signed(b"event=partner.created"), 400, "body is not valid JSON"),
    ("truncated json", *signed(b'{"event":"partner.created"'), 400, "body is not valid JSON"),
    ("not utf-8", *signed(b'{"event":"partner.created\xff"}'), 400, "body is not valid JSON"),
    ("json array", *signed(b'[{"event":"partner.created"}]'), 400, "body must be a JSON object"),
    ("json string", *signed(b'"partner.created"'), 400, "body must be a JSON object"),
    ("no event", *signed(b'{"data":{}}'), 400, 'body has no "event"'),
    ("event not a string", *signed(b'{"event":["partner.created"]}'), 400, 'body has no "event"'),
    ("empty body", *signed(b""), 400, "body is not valid JSON"),
]


@pytest.mark.parametrize(
    "body, headers, status, error", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_answer_and_changes_nothing(client, settings, redis_conn, body, headers, status, error):
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code == status
    assert response.get_json() == {"error": error}
    assert rows(settings.database_url) == []
    assert wakeups(redis_conn) == 0


def test_an_oversized_body_is_refused_from_its_length_without_reading_it(live_server, settings, redis_conn):
    parts = urlsplit(live_server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    # Announce 1 MiB + 1 byte but send only a few: an answer proves the body was never read.
    conn.putrequest("POST", URL)
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.putheader("Signature", "0" * 64)
    conn.endheaders()
    conn.send(b'{"event":')
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": "request entity too large"}
    conn.close()
    assert rows(settings.database_url) == []


def test_an_oversized_chunked_body_is_refused(live_server, settings):
    big = b'{"event":"partner.created","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    _, headers = signed(big)
    parts = urlsplit(live_server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    chunks = (big[start : start + 64 * 1024] for start in range(0, len(big), 64 * 1024))
    try:
        conn.request("POST", URL, body=chunks, headers=headers, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once the limit is passed
    response = conn.getresponse()
    assert response.status == 413
    conn.close()
    assert rows(settings.database_url) == []


def test_a_body_of_exactly_the_limit_is_accepted(client, settings):
    document = sample_delivery("partner.created")
    document["pad"] = ""
    size = len(json.dumps(document).encode())
    document["pad"] = "x" * (MAX_BODY_BYTES - size)
    body, headers = signed(document)
    assert len(body) == MAX_BODY_BYTES
    assert client.post(URL, data=body, headers=headers).status_code == 202


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_as_json(client, method):
    response = client.open(URL, method=method)
    assert response.status_code == 405
    assert response.get_json() == {"error": "method not allowed"}


def test_unknown_paths_get_404_as_json(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and response.get_json() == {"error": "not found"}


def test_the_same_bytes_again_are_a_duplicate(client, settings, redis_conn):
    body, headers = signed(sample_delivery("transaction.created"))
    first = client.post(URL, data=body, headers=headers).get_json()
    second = client.post(URL, data=body, headers=headers)
    # Signed with the other secret, it is still the same delivery.
    third = client.post(URL, data=body, headers=signed(body, secret=SECRETS[1])[1])

    assert second.status_code == 202 and third.status_code == 202
    assert second.get_json() == {"status": "duplicate", "id": first["id"]}
    assert third.get_json() == {"status": "duplicate", "id": first["id"]}
    assert len(rows(settings.database_url)) == 1
    assert wakeups(redis_conn) == 1


def test_fifty_copies_at_the_same_moment_store_one_row_and_wake_one_worker(live_server, settings, redis_conn):
    body, headers = signed(sample_delivery("partner.updated"))
    parts = urlsplit(live_server)

    def post(_):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", URL, body=body, headers=headers)
        response = conn.getresponse()
        answer = (response.status, json.loads(response.read()))
        conn.close()
        return answer

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))

    assert {status for status, _ in answers} == {202}
    statuses = sorted(answer["status"] for _, answer in answers)
    assert statuses == ["duplicate"] * 49 + ["queued"]
    assert len({answer["id"] for _, answer in answers}) == 1
    assert len(rows(settings.database_url)) == 1
    assert wakeups(redis_conn) == 1


def test_many_distinct_concurrent_deliveries_are_all_stored_once(live_server, settings, redis_conn):
    parts = urlsplit(live_server)
    bodies = [signed(sample_delivery("customer.updated", key=f"acct_{i}")) for i in range(120)]

    def post(item):
        body, headers = item
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", URL, body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        return response.status, answer

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, bodies))
    assert all(status == 202 and answer["status"] == "queued" for status, answer in answers)
    stored = rows(settings.database_url)
    assert len(stored) == 120
    assert {r["body"] for r in stored} == {body for body, _ in bodies}
    assert wakeups(redis_conn) == 1  # one wake-up waits at a time: the worker claims them all


def test_an_unhandled_event_type_is_stored_as_ignored_without_a_job(client, settings, redis_conn):
    body, headers = signed({"event": "reward.paid", "data": {"key": "rw_1"}})
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code == 202
    assert response.get_json()["status"] == "ignored"
    [row] = rows(settings.database_url)
    assert row["status"] == "ignored" and row["event_type"] == "reward.paid"
    assert wakeups(redis_conn) == 0
    again = client.post(URL, data=body, headers=headers).get_json()
    assert again["status"] == "duplicate"


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_database_down_gives_503_and_stores_nothing(tmp_path, redis_server_url, redis_conn, database):
    url = DEAD_PG_URL if database == "postgresql" else f"sqlite:///{tmp_path}/missing/dir/x.db"
    app = create_app(_settings(url, redis_server_url))
    body, headers = signed(sample_delivery("partner.created"))
    response = app.test_client().post(URL, data=body, headers=headers)
    assert response.status_code == 503
    assert response.get_json() == {"error": "could not store the delivery; try again"}
    assert response.headers["Retry-After"]
    assert wakeups(redis_conn) == 0


def test_redis_down_still_acknowledges_and_the_sweeper_wakes_a_worker_later(settings, redis_conn):
    down = create_app(settings.with_overrides(redis_url=DEAD_REDIS_URL))
    body, headers = signed(sample_delivery("partner.created"))
    response = down.test_client().post(URL, data=body, headers=headers)

    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    [row] = rows(settings.database_url)
    assert row["status"] == "pending"
    assert wakeups(redis_conn) == 0

    inbox, jobs = Inbox(db.engine_for(settings.database_url)), JobQueue(redis_conn)
    # Younger than the sweep age: left alone for now.
    assert sweep(inbox, jobs, older_than=timedelta(seconds=60)) == 0
    assert sweep(inbox, jobs, older_than=timedelta(0)) == 1
    assert wakeups(redis_conn) == 1
    # A wake-up that already waits is not doubled, however often the sweeper looks.
    assert sweep(inbox, jobs, older_than=timedelta(0)) == 1
    assert wakeups(redis_conn) == 1


def test_healthz_reports_what_it_checked(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok"}
    assert body["salesforce"].startswith("off")


def test_healthz_is_503_when_redis_is_down(settings):
    app = create_app(settings.with_overrides(redis_url=DEAD_REDIS_URL))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks == {"database": "ok", "redis": "down"}  # why, only to the operator (test_health)


def test_healthz_is_503_when_the_database_is_down(redis_server_url, redis_conn):
    app = create_app(_settings(DEAD_PG_URL, redis_server_url))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks == {"database": "down", "redis": "ok"}


def test_the_web_app_refuses_to_start_without_a_secret(settings):
    from sync.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="PARTNERO_WEBHOOK_SECRET"):
        create_app(settings.with_overrides(webhook_secrets=()))


def _settings(database_url: str, redis_url: str):
    from sync.settings import Settings
    from tests.conftest import MAPPINGS

    return Settings(webhook_secrets=SECRETS, database_url=database_url, redis_url=redis_url, mappings_dir=MAPPINGS)


def test_copies_racing_through_two_web_processes_store_one_row(settings, redis_conn):
    """Two apps, two inbox writers, separate connections: the UNIQUE fingerprint decides."""
    import threading

    from werkzeug.serving import make_server

    servers = [make_server("127.0.0.1", 0, create_app(settings), threaded=True) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deliveries = [signed(sample_delivery("partner.updated", id=f"ptn_{i}")) for i in range(10)]
        calls = [(servers[n % 2].server_port, deliveries[n % 10]) for n in range(100)]

        def post(call):
            port, (body, headers) = call
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", URL, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.status, json.loads(response.read())
            conn.close()
            return answer

        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(post, calls))
    finally:
        for server in servers:
            server.shutdown()

    assert {status for status, _ in answers} == {202}
    assert sorted(a["status"] for _, a in answers).count("queued") == 10
    assert len(rows(settings.database_url)) == 10
    assert wakeups(redis_conn) == 1


def test_the_inbox_works_on_mariadb_too(mariadb_url, redis_server_url, redis_conn):
    from tests.conftest import empty_tables

    empty_tables(mariadb_url)
    app = create_app(_settings(mariadb_url, redis_server_url))
    client = app.test_client()
    document = sample_delivery("partner.created")
    document["pad"] = "x" * (200 * 1024)  # past MySQL's 64 KiB BLOB
    body, headers = signed(document)
    first = client.post(URL, data=body, headers=headers).get_json()
    again = client.post(URL, data=body, headers=headers).get_json()
    assert first["status"] == "queued" and again == {"status": "duplicate", "id": first["id"]}
    [row] = rows(mariadb_url)
    assert row["body"] == body
