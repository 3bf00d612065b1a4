"""``/metrics`` end to end: the real receiver, worker and flush count into real Redis, and a scrape
reads exact numbers back, whichever web process answers."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from sync.core.errors import TransientError
from sync.ops import metrics
from sync.partnero.samples import CUSTOMER, sample_delivery
from sync.services import Services
from sync.settings import MAX_BODY_BYTES, DashboardSettings
from sync.store import db
from sync.store.inbox import webhook_events
from sync.worker.process import build_worker
from tests.conftest import DEAD_PG_URL, DEAD_REDIS_URL, empty_tables, signed
from tests.test_processes import free_port, procfile, service_environment, start, wait_for
from tests.test_salesforce_sync import deliver, partner, password_login
from tests.warehouse_helpers import envelope

URL = "/webhooks/partnero"
RECEIVED = "partnero_sync_deliveries_received_total"
ATTEMPTS = "partnero_sync_delivery_attempts_total"
LAG = "partnero_sync_delivery_lag_seconds"
REASONS = ("bad_signature", "missing_signature", "malformed_signature", "malformed_json", "too_large",
           "unavailable", "error")


def parse(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Sample name -> {label values, in the alphabetical order of their names: value}."""
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values = tuple(value for _, value in sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[values] = sample.value
    return found


def scrape(base: str, headers: dict[str, str] | None = None) -> dict[str, dict[tuple[str, ...], float]]:
    request = urllib.request.Request(f"{base}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return parse(response.read().decode())


def post(base: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}{URL}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_chunked(base: str, body: bytes, headers: dict[str, str]) -> int:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", URL, body=(body[i : i + 65536] for i in range(0, len(body), 65536)),
                     headers=headers, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once the limit is passed
    status = conn.getresponse().status
    conn.close()
    return status


def received(program: str = "default", **counts: int) -> dict[tuple[str, str, str], float]:
    """The received counter as it should read, of the one ``program``: every known series, 0
    unless given (``queued=4``, ``refused_too_large=2``); labels outcome, program, reason."""
    expected = {("queued", program, ""): 0.0, ("duplicate", program, ""): 0.0, ("ignored", program, ""): 0.0}
    expected.update({("refused", program, reason): 0.0 for reason in REASONS})
    for name, value in counts.items():
        outcome, _, reason = name.partition("_")
        assert (outcome, program, reason) in expected, name
        expected[outcome, program, reason] = float(value)
    return expected


def attempts(processed=0, ignored=0, failed=0, retried=0, program: str = "default") -> dict[tuple[str, str], float]:
    """The attempts counter of the one ``program``; labels outcome, program."""
    return {("processed", program): processed, ("ignored", program): ignored, ("failed", program): failed,
            ("retried", program): retried}


def queue(queued=0, scheduled=0, started=0, failed=0) -> dict[tuple[str], float]:
    return {("queued",): queued, ("scheduled",): scheduled, ("started",): started, ("failed",): failed}


def inbox(pending=0, processed=0, ignored=0, failed=0, program="default") -> dict[tuple[str, str], float]:
    """The inbox_deliveries series of one program: (program, status) -> count."""
    return {(program, "pending"): pending, (program, "processed"): processed, (program, "ignored"): ignored,
            (program, "failed"): failed}


def age_rows(database_url: str, seconds: int) -> None:
    """Make every stored delivery look ``seconds`` older, so the lag lands in a known bucket."""
    t = webhook_events
    with db.engine_for(database_url).begin() as conn:
        for event_id, received_at in conn.execute(sa.select(t.c.id, t.c.received_at)).all():
            conn.execute(t.update().where(t.c.id == event_id).values(received_at=received_at - timedelta(seconds=seconds)))


def test_a_known_sequence_reads_back_exactly(live_server, settings, redis_conn):
    valid = [sample_delivery("partner.created", id=f"ptn_{i}") for i in range(3)]
    for document in valid:
        status, answer = post(live_server, *signed(document))
        assert (status, answer["status"]) == (202, "queued")
    assert post(live_server, *signed(valid[0]))[1]["status"] == "duplicate"
    assert post(live_server, *signed({"event": "reward.paid", "data": {"key": "rw_1"}}))[1]["status"] == "ignored"
    # Stored, but the worker cannot read it: it fails there.
    assert post(live_server, *signed({"event": "partner.created", "data": "not an object"}))[1]["status"] == "queued"
    body, headers = signed(valid[1])
    assert post(live_server, body, {**headers, "Signature": "0" * 64})[0] == 401
    assert post(live_server, body, {"Content-Type": "application/json"})[0] == 401
    assert post(live_server, body, {**headers, "Signature": "not hex"})[0] == 401
    assert post(live_server, *signed(b"{not json"))[0] == 400
    big = b'{"event":"partner.created","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    assert post(live_server, *signed(big))[0] == 413  # refused from Content-Length
    assert post_chunked(live_server, *signed(big)) == 413  # refused once the body passes the limit
    age_rows(settings.database_url, 1000)

    before = scrape(live_server)
    assert before["partnero_sync_up"] == {("database",): 1, ("redis",): 1}
    assert before[RECEIVED] == received(queued=4, duplicate=1, ignored=1, refused_bad_signature=1,
                                        refused_missing_signature=1, refused_malformed_signature=1,
                                        refused_malformed_json=1, refused_too_large=2)
    assert before["partnero_sync_inbox_deliveries"] == inbox(pending=4, ignored=1)
    assert before["partnero_sync_queue_jobs"] == queue(queued=1)  # one wake-up for all four
    assert before["partnero_sync_queue_workers"] == {(): 0}
    assert before["partnero_sync_oldest_pending_age_seconds"][("default",)] >= 1000
    assert before[ATTEMPTS] == attempts()
    assert before[f"{LAG}_count"] == {("default",): 0}

    build_worker(Services.build(settings, redis_conn)).work(burst=True)  # the real job code

    after = scrape(live_server)
    assert after[RECEIVED] == before[RECEIVED]
    assert after[ATTEMPTS] == attempts(processed=3, failed=1)
    assert after["partnero_sync_inbox_deliveries"] == inbox(processed=3, ignored=1, failed=1)
    assert after["partnero_sync_oldest_pending_age_seconds"] == {("default",): 0}
    assert after["partnero_sync_queue_jobs"] == queue()  # the failed delivery's job did its work
    assert after["partnero_sync_queue_workers"] == {(): 0}
    # Each processed delivery waited a little over 1000 s: all three in the bucket up to 1800 s.
    buckets = after[f"{LAG}_bucket"]
    assert [buckets[(le, "default")] for le in ("0.1", "1.0", "60.0", "600.0", "1800.0", "3600.0", "+Inf")] == [
        0, 0, 0, 0, 3, 3, 3]
    assert after[f"{LAG}_count"] == {("default",): 3}
    assert 3000 <= after[f"{LAG}_sum"][("default",)] < 3 * 1800
    assert "partnero_sync_crm_outbox_records" not in after  # Salesforce is off
    assert "partnero_sync_salesforce_calls_total" not in after  # a family without samples
    assert "# TYPE partnero_sync_salesforce_refusals_total counter" in _text(live_server)
    assert scrape(live_server) == after  # reading changes nothing


def test_a_database_outage_is_counted_and_shown(settings, redis_conn):
    body, headers = signed(sample_delivery())
    assert create_app(settings).test_client().post(URL, data=body, headers=headers).status_code == 202
    down = settings.with_overrides(database_url=DEAD_PG_URL)
    build_worker(Services.build(down, redis_conn)).work(burst=True)  # the wake-up finds the database away: retried later
    down_client = create_app(down).test_client()
    body, headers = signed(sample_delivery(id="ptn_2"))
    assert down_client.post(URL, data=body, headers=headers).status_code == 503

    response = down_client.get("/metrics")
    assert response.status_code == 200
    found = parse(response.get_data(as_text=True))
    assert found["partnero_sync_up"] == {("database",): 0, ("redis",): 1}
    assert "partnero_sync_inbox_deliveries" not in found and "partnero_sync_oldest_pending_age_seconds" not in found
    assert found["partnero_sync_queue_jobs"] == queue(scheduled=1)
    assert found[RECEIVED] == received(queued=1, refused_unavailable=1)
    # It could not claim any delivery, so none was attempted; the retry shows as a scheduled job.
    assert found[ATTEMPTS] == attempts()


def test_with_redis_down_metrics_still_answer_and_the_counts_wait(settings, redis_conn):
    down_client = create_app(settings.with_overrides(redis_url=DEAD_REDIS_URL)).test_client()
    body, headers = signed(sample_delivery())
    assert down_client.post(URL, data=body, headers=headers).json["status"] == "queued"  # the sweeper enqueues it

    response = down_client.get("/metrics")
    assert response.status_code == 200
    found = parse(response.get_data(as_text=True))
    assert found["partnero_sync_up"] == {("database",): 1, ("redis",): 0}
    assert found["partnero_sync_inbox_deliveries"] == inbox(pending=1)
    assert RECEIVED not in found and "partnero_sync_queue_jobs" not in found  # not shown rather than wrong

    # Redis is back (here: a process bound to a live one): the buffered count arrives.
    found = parse(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    assert found[RECEIVED] == received(queued=1)


def test_credentials_guard_metrics_when_they_are_set(settings, redis_conn):
    dashboard = DashboardSettings("operator", "correct horse battery")
    client = create_app(settings.with_overrides(dashboard=dashboard)).test_client()

    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = base64.b64encode(b"operator:wrong password!").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {wrong}"}).status_code == 401

    right = base64.b64encode(b"operator:correct horse battery").decode()
    response = client.get("/metrics", headers={"Authorization": f"Basic {right}"})
    assert response.status_code == 200
    assert parse(response.get_data(as_text=True))["partnero_sync_up"] == {("database",): 1, ("redis",): 1}


def test_without_credentials_metrics_are_open(client, redis_conn):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == CONTENT_TYPE_LATEST
    assert "# HELP partnero_sync_deliveries_received_total " in response.get_data(as_text=True)



def test_salesforce_calls_and_refusals_are_counted_by_program_object_and_code(settings, fake, redis_conn, tmp_path):
    mappings = tmp_path / "mappings"
    shutil.copytree(settings.mappings_dir, mappings)
    path = mappings / "partner.yml"
    path.write_text(path.read_text().replace("  commission_total:", "  hard_delete: true\n  commission_total:"))
    app = create_app(settings.with_overrides(salesforce=password_login(fake), mappings_dir=mappings))
    services = app.extensions["partnero"]
    fake.reject(lambda r: r.get("Partnero_Partner_Id__c") == "ptn_bad", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "Partners from this domain are not allowed")

    deliver(services, partner(id="ptn_0"), partner(id="ptn_1"), partner(id="ptn_bad"))
    assert services.flusher().flush().failed == 1  # one call: two synced, one refused
    deliver(services, envelope("partner.deleted", "2026-04-01T00:00:00Z", id="ptn_0"))
    assert services.flusher().flush().synced == 1  # one delete
    deliver(services, envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER))
    assert services.flusher().flush().waiting == 1  # its partner is not in Salesforce
    deliver(services, partner(id="ptn_late"))
    fake.outage = "503"
    with pytest.raises(TransientError):
        services.flusher().flush()
    fake.outage = None

    found = parse(app.test_client().get("/metrics").get_data(as_text=True))
    assert found["partnero_sync_salesforce_calls_total"] == {  # (kind, object): each call once, login too
        ("login", ""): 1, ("upsert", "Account"): 1, ("delete", "Contact"): 1, ("upsert", "Contact"): 2,
    }
    assert found["partnero_sync_salesforce_refusals_total"] == {  # (code, object, program)
        ("INVALID_FIELD", "Account", "default"): 1,
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Contact", "default"): 1,
        ("UNAVAILABLE", "Contact", "default"): 1,
    }
    assert found["partnero_sync_crm_outbox_records"] == {  # (object, program, status)
        ("Account", "default", "pending"): 0, ("Account", "default", "waiting"): 1,
        ("Account", "default", "synced"): 0, ("Account", "default", "failed"): 0,
        ("Contact", "default", "pending"): 1, ("Contact", "default", "waiting"): 0,
        ("Contact", "default", "synced"): 2, ("Contact", "default", "failed"): 1,
    }
    # Two records reached Salesforce (and a third was deleted there): their arrival-to-sync lag.
    assert found["partnero_sync_salesforce_lag_seconds_count"] == {("default",): 3}
    assert 0 < found["partnero_sync_salesforce_lag_seconds_sum"][("default",)] < 60


def test_every_web_process_reports_the_same_totals(pg_url, redis_server_url, redis_conn):
    empty_tables(pg_url)
    port = free_port()
    env = service_environment(pg_url, redis_server_url, port, LOG_FORMAT="json")
    # gunicorn's access log names the process that answered each request.
    web = start(procfile()["web"] + " --access-logfile - --access-logformat '%(p)s %(m)s %(U)s'", env)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(web.stdout.readline, b"")), daemon=True)
    reader.start()

    def answered_by(method: str, path: str) -> set[str]:
        pattern = re.compile(rf"<(\d+)> {method} {re.escape(path)}\b")
        return {m.group(1) for line in list(lines) if (m := pattern.search(line.decode("utf-8", "replace")))}

    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), what="the web processes")
        total = 120
        with ThreadPoolExecutor(16) as pool:  # a new connection for each delivery
            answers = list(pool.map(lambda i: post(base, *signed(sample_delivery(id=f"ptn_{i}")))[0], range(total)))
        assert answers == [202] * total

        def received_total() -> float:
            return sum(scrape(base)[RECEIVED].values())

        # Each process adds its counts to Redis within about a second.
        wait_for(lambda: received_total() == total, what="every process's counts to reach Redis")
        for _ in range(50):
            with ThreadPoolExecutor(8) as pool:
                assert list(pool.map(lambda _: received_total(), range(8))) == [total] * 8
            if len(answered_by("GET", "/metrics")) >= 2:
                break
        assert len(answered_by("POST", URL)) == 2, "both processes took deliveries"
        assert len(answered_by("GET", "/metrics")) == 2, "both processes answered scrapes"
    finally:
        web.send_signal(signal.SIGTERM)  # as a PaaS stops it; the reader has the output
        try:
            web.wait(timeout=30)
        finally:
            try:
                os.killpg(web.pid, signal.SIGKILL)  # whatever it left behind
            except ProcessLookupError:
                pass
            reader.join(timeout=5)
    assert web.returncode == 0, b"".join(lines).decode("utf-8", "replace")


def _text(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return response.read().decode()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


# -- the recorder ---------------------------------------------------------------------------


def test_increments_wait_while_redis_is_down_and_arrive_after(redis_conn):
    recorder = metrics.Recorder(interval=3600)
    recorder.bind(redis.Redis.from_url(DEAD_REDIS_URL))
    recorder.add([("partnero-sync:metrics:test", "a", 2), ("partnero-sync:metrics:test", "sum", 0.5)])
    assert recorder.push() is False
    recorder.add([("partnero-sync:metrics:test", "a", 3)])
    recorder.bind(redis_conn)
    assert recorder.push() is True
    assert redis_conn.hgetall("partnero-sync:metrics:test") == {b"a": b"5", b"sum": b"0.5"}
    assert redis_conn.ttl("partnero-sync:metrics:test") == -1  # no expiry: counters only grow


def test_the_buffer_is_bounded(redis_conn):
    recorder = metrics.Recorder(interval=3600, max_series=2)
    recorder.add([("partnero-sync:metrics:test", field, 1) for field in ("a", "b", "c", "a")])
    assert recorder.dropped == 1
    recorder.bind(redis_conn)
    assert recorder.push()
    assert redis_conn.hgetall("partnero-sync:metrics:test") == {b"a": b"2", b"b": b"1"}


def test_a_forked_child_pushes_its_own_counts_and_not_its_parents(redis_conn):
    recorder = metrics.Recorder(interval=3600)
    recorder.bind(redis_conn)
    recorder.add([("partnero-sync:metrics:test", "n", 1)])  # buffered in the parent
    pid = os.fork()
    if pid == 0:  # the child: its own pusher thread must start and push only the child's count
        try:
            recorder.interval = 0.05
            recorder.add([("partnero-sync:metrics:test", "n", 10)])
            wait_for(lambda: redis_conn.hget("partnero-sync:metrics:test", "n") == b"10", timeout=10)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert recorder.push()
    assert redis_conn.hget("partnero-sync:metrics:test", "n") == b"11"


def test_label_values_never_carry_arbitrary_text(redis_conn):
    recorder = metrics.recorder
    recorder.bind(redis_conn)
    metrics.SALESFORCE_REFUSALS.inc(program="default", object="Contact", code="BAD, CODE=\"x\"\n")
    metrics.SALESFORCE_REFUSALS.inc(program="default", object="Contact", code=None)
    metrics.SALESFORCE_LAG.observe([1.0], program="a,b=c")
    assert recorder.push()
    assert redis_conn.hgetall(metrics.SALESFORCE_REFUSALS.key) == {b"program=default,object=Contact,code=other": b"2"}
    assert set(redis_conn.hgetall(metrics.SALESFORCE_LAG.key)) == {b"program=other,le=1.0", b"program=other,count",
                                                                   b"program=other,sum"}
    with pytest.raises(TypeError):
        metrics.SALESFORCE_CALLS.inc(obj="Contact")
