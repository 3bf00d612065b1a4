"""Logs: one JSON object per line from the real processes, delivery lines with their fields, and
never a secret or a payload value, neither in the logs nor in what the service stores."""

from __future__ import annotations

import json
import logging
import subprocess

import sqlalchemy as sa

from sync.ops import logs
from sync.partnero.samples import sample_delivery
from sync.store import db
from sync.store.inbox import webhook_events
from tests.conftest import empty_tables, salesforce_env, signed
from tests.test_processes import environment, free_port, get, post, procfile, start, statuses, stop, wait_for

WEBHOOK_SECRET = "whsec_Zq8!never-in-a-log"
DASHBOARD_PASSWORD = "dash-Pa55word-never-logged"
PRIVATE = {  # payload values that must never leave the inbox's body column
    "email": "very.private.person@example.org",
    "name": "Privatissima",
    "surname": "Geheimnis",
}
BAD_AMOUNT = "98,765.4321-not-a-number"


def _values(fake) -> list[str]:
    return [WEBHOOK_SECRET, DASHBOARD_PASSWORD, fake.password, fake.security_token, *PRIVATE.values(), BAD_AMOUNT]



def test_the_processes_log_json_lines_without_secrets_or_payload_values(pg_url, redis_server_url, redis_conn,
                                                                       fake, tmp_path):
    empty_tables(pg_url)  # it counts every delivery in the database: only its own may be there
    port = free_port()
    env = environment(
        DATABASE_URL=pg_url, REDIS_URL=redis_server_url, PARTNERO_WEBHOOK_SECRET=WEBHOOK_SECRET, PORT=str(port),
        RQ_DASHBOARD_USERNAME="ops", RQ_DASHBOARD_PASSWORD=DASHBOARD_PASSWORD,
        **salesforce_env(fake),
    )
    env.pop("LOG_FORMAT", None)  # the default: JSON, since the output is not a terminal
    release = subprocess.run(["/bin/sh", "-c", procfile()["release"]], env=env, capture_output=True, text=True)
    assert release.returncode == 0, release.stdout + release.stderr
    web = start(procfile()["web"], env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")
        good = sample_delivery("partner.created", id="ptn_logs")
        good["data"].update(PRIVATE)
        bad = sample_delivery("transaction.created", key="tx_logs")
        bad["data"]["amount"] = BAD_AMOUNT
        for document in (good, bad, good):  # the second `good` is a duplicate
            assert post(f"{base}/webhooks/partnero", *signed(document, WEBHOOK_SECRET))[0] == 202
        assert post(f"{base}/webhooks/partnero", *signed(good, "not-the-secret"))[0] == 401
        malformed = f'{{"event": "partner.created", "data": "{PRIVATE["email"]}"'.encode()
        assert post(f"{base}/webhooks/partnero", *signed(malformed, WEBHOOK_SECRET))[0] == 400
        worker = subprocess.run(["partnero-sync", "worker", "--burst"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        wait_for(lambda: statuses(pg_url) == ["processed", "failed"], what="the deliveries' outcomes")
    finally:
        web_output = stop(web)

    worker_output = worker.stdout + worker.stderr
    entries = []
    for output in (web_output, worker_output):
        for line in output.splitlines():
            if line.strip():
                entries.append(json.loads(line))  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)

    delivery_lines = [e for e in entries if e.get("inbox_id") is not None]
    processed = [e for e in delivery_lines if e["message"] == "delivery processed"]
    assert [e["event_type"] for e in processed] == ["partner.created"]
    assert not [e for e in entries if "entity_id" in e]  # a record's id is a value from the delivery
    assert len(processed[0]["fingerprint"]) == 64
    failed = [e for e in delivery_lines if e["message"].startswith("delivery failed")]
    assert [(e["event_type"], e["level"]) for e in failed] == [("transaction.created", "ERROR")]
    assert all("ptn_logs" not in line and "tx_logs" not in line for line in (web_output + worker_output).splitlines())
    assert "warehouse.columns.amount" in failed[0]["message"]
    received = [e["message"] for e in delivery_lines if e["logger"] == "app.webhooks"]
    assert received == ["delivery queued", "delivery queued", "delivery duplicate"]
    assert any(e["logger"].startswith("gunicorn") for e in entries)  # gunicorn's own lines too
    assert any("Salesforce flush" in e["message"] for e in entries)

    # Nothing private anywhere: logs, the inbox's errors, Redis (job descriptions, results, failures).
    with db.engine_for(pg_url).connect() as conn:
        errors = [e for (e,) in conn.execute(sa.select(webhook_events.c.last_error)) if e]
    assert errors and all("warehouse.columns.amount" in e for e in errors)
    redis_dump = " ".join(_dump(redis_conn))
    for value in _values(fake):
        assert value not in web_output and value not in worker_output, value
        assert all(value not in e for e in errors), value
        assert value not in redis_dump, value


def _dump(connection) -> list[str]:
    """Every key and value in the test's Redis database, as text."""
    found = []
    for key in connection.scan_iter():
        kind = connection.type(key).decode()
        found.append(key.decode("utf-8", "replace"))
        if kind == "string":
            values = [connection.get(key)]
        elif kind == "hash":
            values = [v for pair in connection.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = connection.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            values = list(connection.smembers(key)) if kind == "set" else connection.zrange(key, 0, -1)
        else:
            values = []
        found += [_text(v) for v in values]
    return found


def _text(value: bytes) -> str:
    import zlib

    try:  # RQ keeps job data and results zlib-compressed
        value = zlib.decompress(value)
    except zlib.error:
        pass
    return value.decode("utf-8", "replace")


def test_text_lines_show_the_delivery_fields_in_brackets():
    formatter = logs.TextFormatter()
    record = logging.LogRecord("sync.worker.jobs", logging.INFO, __file__, 1, "delivery %s", ("processed",), None)
    for name, value in logs.delivery_fields(12, "partner.created", "3f2a9c1e" + "0" * 56).items():
        setattr(record, name, value)
    line = formatter.format(record)
    assert line.endswith("INFO sync.worker.jobs: delivery processed [inbox #12 partner.created fp=3f2a9c1e0000]")


def test_json_lines_are_bounded_and_carry_the_fields():
    record = logging.LogRecord("sync.worker.jobs", logging.ERROR, __file__, 1, "x" * 10_000, (), None)
    record.inbox_id = 7
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["inbox_id"] == 7 and entry["level"] == "ERROR" and entry["logger"] == "sync.worker.jobs"
    assert len(entry["message"]) < logs.MAX_MESSAGE + 100
