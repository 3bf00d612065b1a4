"""End to end: a ``notify:`` mapping with the Procfile's web and worker as real processes, PostgreSQL,
Redis and the HTTPS webhook stand-in: a sale's message arrives once, after an endpoint that failed
(503, then 429 with Retry-After) recovered, the delivery processed all along; a duplicate and a
replay send nothing again (a requeue: tests/test_notify_pipeline.py); a false condition sends
nothing; an unset variable fails its message with the reason; /ops shows the story; and no value of
the delivery reaches Redis or a log."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sync.store import db, notifications
from sync.store.inbox import webhook_events
from tests.conftest import postgres_database, signed
from tests.fakes.catcher import Catcher
from tests.ops_helpers import AUTH
from tests.test_notify_pipeline import MARKER, notify_mappings, sale
from tests.test_privacy_end_to_end import finish, redis_contents
from tests.test_processes import BIN, ROOT, free_port, get, post, procfile, service_environment, start, wait_for


@pytest.fixture
def database() -> str:
    generator = postgres_database(f"partnero_notify_{os.getpid()}")
    yield next(generator)
    next(generator, None)  # dropped


def row(url: str, inbox_id: int, name: str = "big-sale") -> dict | None:
    t = notifications.notifications
    with db.engine_for(url).connect() as conn:
        found = conn.execute(sa.select(t).where(t.c.inbox_id == inbox_id, t.c.name == name)).one_or_none()
    return dict(found._mapping) if found is not None else None


def status_of(url: str, inbox_id: int) -> str | None:
    with db.engine_for(url).connect() as conn:
        return conn.execute(sa.select(webhook_events.c.status).where(webhook_events.c.id == inbox_id)).scalar()


def page(url: str) -> str:
    request = urllib.request.Request(url, headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_a_notify_mapping_end_to_end(database, redis_server_url, redis_conn, tmp_path):
    hooks = tmp_path / "hooks"  # the delivery backoff a second a step, for the retries
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text("import sync.core.backoff\nsync.core.backoff.DELIVERY_DELAYS = (1, 1, 1)\n")
    mappings = notify_mappings(tmp_path / "mappings")
    port = free_port()
    with Catcher() as catcher:
        env = service_environment(database, redis_server_url, port, MAPPINGS_DIR=str(mappings), LOG_FORMAT="json",
                                  LOG_LEVEL="DEBUG", SALES_WEBHOOK_URL=catcher.url("sales"),
                                  REQUESTS_CA_BUNDLE=catcher.ca_bundle, RQ_DASHBOARD_USERNAME="ops",
                                  RQ_DASHBOARD_PASSWORD="a-long-password-1")
        check = subprocess.run([str(BIN / "partnero-sync"), "mappings", "check"], env=env, capture_output=True,
                               text=True, cwd=tmp_path)
        assert check.returncode == 1 and "notify.ops-copy.url: OPS_WEBHOOK_URL is not set" in check.stderr
        web = start(procfile()["web"], env, cwd=tmp_path)
        worker = start(procfile()["worker"], {**env, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}"}, cwd=tmp_path)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")
            catcher.fail(1, status=503)
            catcher.fail(1, status=429, retry_after=2)
            status, answer = post(f"{base}/webhooks/partnero", *signed(sale(1234.56)))
            assert status == 202
            first = answer["id"]
            # The endpoint refused the first post: the delivery is processed all the same.
            wait_for(lambda: (row(database, first) or {}).get("last_error") == "HTTP 503", 60, what="a 503")
            assert status_of(database, first) == "processed"
            [message] = catcher.wait_for(1, hook="sales", timeout=60)
            assert message == {"text": f"new sale by partner {MARKER}: 1,234.56 USD"}
            assert [p.status for p in catcher.posted] == [503, 429, 200]
            sent = wait_for(lambda: (found := row(database, first))["status"] == "sent" and found, 30,
                            what="the row to say sent")
            assert sent["attempts"] == 3
            assert sent["sent_at"] - sent["created_at"] >= timedelta(seconds=2)  # obeyed Retry-After

            # Again: the same delivery, and a replay of it.
            assert post(f"{base}/webhooks/partnero", *signed(sale(1234.56)))[1]["status"] == "duplicate"
            replayed = subprocess.run([str(BIN / "partnero-sync"), "replay", "--event", "transaction.created"],
                                      env=env, capture_output=True, text=True, cwd=tmp_path)
            assert replayed.returncode == 0, replayed.stderr
            # A later sale: its message is the barrier behind which any second one would have gone.
            later = post(f"{base}/webhooks/partnero", *signed(sale(5000, key="in_zq9later")))[1]["id"]
            messages = catcher.wait_for(2, hook="sales", timeout=60)
            # Below the condition: processed, and no message.
            small = post(f"{base}/webhooks/partnero", *signed(sale(10, key="in_zq9small")))[1]["id"]
            wait_for(lambda: status_of(database, small) == "processed", 60, what="the small sale")
            story = page(f"{base}/ops/deliveries/{first}")
        finally:
            web_output, worker_output = finish(web), finish(worker)
        assert [m["text"] for m in messages] == [f"new sale by partner {MARKER}: 1,234.56 USD",
                                                 f"new sale by partner {MARKER}: 5,000.00 USD"]
        assert len(catcher.messages("sales")) == 2
        assert status_of(database, later) == "processed" and row(database, small) is None

    # The variable that is not set: the worker said so at its start; the message failed, the delivery did not.
    assert "notify.ops-copy.url: OPS_WEBHOOK_URL is not set" in worker_output
    copy = row(database, first, "ops-copy")
    assert (copy["status"], copy["last_error"]) == ("failed", "OPS_WEBHOOK_URL is not set: set it to the "
                                                              "webhook's URL (the message was not sent)")
    for shown in ("big-sale", "ops-copy", f"new sale by partner {MARKER}: 1,234.56 USD", "OPS_WEBHOOK_URL is not set"):
        assert shown in story, shown

    # The message carries the partner's id (the mapping chose it); nothing else does.
    assert "notification big-sale sent" in worker_output
    assert not [c for c in redis_contents(redis_conn) if MARKER.encode() in c]
    for name, output in (("web", web_output), ("worker", worker_output)):
        assert MARKER not in output, name
        assert catcher.url("sales") not in output, name
