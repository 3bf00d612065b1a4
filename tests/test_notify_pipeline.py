"""A mapping's notifications through the real receiver, a real burst worker, the database and the
HTTPS webhook stand-in (``tests/fakes/catcher.py``): sent once per delivery after its commit,
retried on the delivery backoff without touching the delivery, failed with a reason, shown in /ops."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sync.mapping import Notice
import sqlalchemy as sa
from rq import Queue

from app import create_app
from sync.core import backoff
from sync.partnero.samples import sample_delivery
from sync.pipeline.notifier import MAX_ATTEMPTS, Notifier
from sync.store import db, notifications
from sync.store.inbox import webhook_events
from sync.worker.queues import NOTIFY_QUEUE_NAME
from sync.pipeline.replay import replay
from sync.pipeline.requeue import requeue_one
from sync.services import Services
from tests.conftest import MAPPINGS, signed
from tests.ops_helpers import AUTH, OPS, post, work

#: In the partner's id: it is in the message (the mapping chose to show it), and nowhere else.
MARKER = "ptn_zq9notify"
EXAMPLE = "# notify:"
OPS_COPY = """
  - name: ops-copy
    url: OPS_WEBHOOK_URL
    fields: {partner: data.partner}
    message: "transaction by {partner}"
"""


def notify_mappings(directory: Path, extra: str = OPS_COPY) -> Path:
    """The shipped mappings with transaction.yml's commented-out example in force, plus ``extra``."""
    shutil.copytree(MAPPINGS, directory)
    path = directory / "transaction.yml"
    text = path.read_text()
    start = text.index(EXAMPLE)
    path.write_text(text[:start] + "\n".join(line[2:] for line in text[start:].splitlines()) + extra)
    return directory


@pytest.fixture
def notify_settings(settings, tmp_path, catcher):
    return settings.with_overrides(mappings_dir=notify_mappings(tmp_path / "mappings"), dashboard=OPS,
                                   webhook_urls={"SALES_WEBHOOK_URL": catcher.url("sales")})


@pytest.fixture
def notify_client(notify_settings, redis_conn):
    return create_app(notify_settings).test_client()


def sale(amount: float, key: str = "in_zq9sale") -> dict:
    return sample_delivery("transaction.created", key=key, amount=amount, partner=MARKER)


def rows(url: str) -> list[dict]:
    t = notifications.notifications
    with db.engine_for(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]


def status_of(url: str, inbox_id: int) -> str:
    with db.engine_for(url).connect() as conn:
        return conn.execute(sa.select(webhook_events.c.status).where(webhook_events.c.id == inbox_id)).scalar()


def test_a_sale_sends_its_message_once_whatever_comes_again(notify_settings, notify_client, redis_conn, catcher):
    url = notify_settings.database_url
    inbox_id = post(notify_client, sale(1234.56))
    work(notify_settings, redis_conn)
    assert catcher.messages("sales") == [{"text": f"new sale by partner {MARKER}: 1,234.56 USD"}]
    assert status_of(url, inbox_id) == "processed"

    # The same delivery again (a duplicate), applied again by `replay`, and by /ops's Replay
    # (requeue_one: the row back to pending, a worker woken): no new row, no new message.
    body, headers = signed(sale(1234.56))
    assert notify_client.post("/webhooks/partnero", data=body, headers=headers).get_json()["status"] == "duplicate"
    services = Services.build(notify_settings, redis_conn)
    assert replay(services, show_progress=False).processed == 1
    assert requeue_one(services.inbox, services.queue, inbox_id) is not None
    work(notify_settings, redis_conn)
    assert status_of(url, inbox_id) == "processed"
    # A new sale after them, whose message is the barrier: everything due is sent by then.
    later = post(notify_client, sale(5000, key="in_zq9later"))
    work(notify_settings, redis_conn)
    assert [m["text"] for m in catcher.messages("sales")] == [
        f"new sale by partner {MARKER}: 1,234.56 USD", f"new sale by partner {MARKER}: 5,000.00 USD"]
    assert [(r["inbox_id"], r["name"], r["status"]) for r in rows(url) if r["name"] == "big-sale"] == [
        (inbox_id, "big-sale", "sent"), (later, "big-sale", "sent")]


def test_no_message_when_the_condition_is_false(notify_settings, notify_client, redis_conn, catcher):
    inbox_id = post(notify_client, sale(999.99))
    work(notify_settings, redis_conn)
    assert status_of(notify_settings.database_url, inbox_id) == "processed"
    assert [r["name"] for r in rows(notify_settings.database_url)] == ["ops-copy"]  # the one without a condition
    assert catcher.messages("sales") == []


def test_an_unset_variable_fails_its_message_with_the_reason_not_the_delivery(notify_settings, notify_client,
                                                                               redis_conn, catcher):
    url = notify_settings.database_url
    inbox_id = post(notify_client, sale(1234.56))
    work(notify_settings, redis_conn)
    assert status_of(url, inbox_id) == "processed"
    by_name = {r["name"]: r for r in rows(url)}
    assert by_name["ops-copy"]["status"] == "failed"
    assert by_name["ops-copy"]["last_error"] == ("OPS_WEBHOOK_URL is not set: set it to the webhook's URL "
                                                 "(the message was not sent)")
    assert by_name["big-sale"]["status"] == "sent"

    # The story in /ops: each notification, its status, attempts, error and text.
    page = notify_client.get(f"/ops/deliveries/{inbox_id}", headers=AUTH).get_data(as_text=True)
    assert 'id="notifications"' in page
    for shown in ("big-sale", "ops-copy", "OPS_WEBHOOK_URL is not set", f"new sale by partner {MARKER}: 1,234.56 USD",
                  "SALES_WEBHOOK_URL (slack)", '<span class="badge s-sent">sent</span>',
                  '<span class="badge s-failed">failed</span>'):
        assert shown in page, shown
    assert catcher.url("sales") not in page


def test_the_send_job_carries_nothing_of_the_delivery(notify_settings, notify_client, redis_conn, catcher):
    post(notify_client, sale(1234.56))
    work(notify_settings, redis_conn)
    [job] = Queue(NOTIFY_QUEUE_NAME, connection=redis_conn).finished_job_registry.get_job_ids()
    from rq.job import Job

    done = Job.fetch(job, connection=redis_conn)
    assert (done.func_name, done.args, done.kwargs) == ("sync.worker.jobs.send_notifications", (), {})
    assert done.return_value() == "notifications: 1 sent, 0 to retry, 1 failed"
    for key in redis_conn.scan_iter():
        assert MARKER.encode() not in key
        if redis_conn.type(key) == b"hash":
            assert not any(MARKER.encode() in v for v in redis_conn.hgetall(key).values())
        elif redis_conn.type(key) == b"string":
            assert MARKER.encode() not in redis_conn.get(key)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_an_endpoint_that_fails_is_tried_again_on_the_delivery_backoff(database_url, catcher):
    engine = db.engine_for(database_url)
    at = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)
    with engine.begin() as conn:
        notifications.add(conn, [(7, Notice("big-sale", "SALES_WEBHOOK_URL", "teams", "hi"))], at)
    clock = Clock(at)
    notifier = Notifier(engine, {"SALES_WEBHOOK_URL": catcher.url("sales")}, clock)
    catcher.fail(1, status=503)
    catcher.fail(1, status=429, retry_after=120)

    assert notifier.send_due().outcomes == {"retried": 1}
    [row] = rows(database_url)
    first = row["next_try_at"] - at
    assert (row["status"], row["last_error"]) == ("pending", "HTTP 503")
    assert timedelta(seconds=backoff.DELIVERY_DELAYS[0]) <= first <= timedelta(seconds=backoff.DELIVERY_DELAYS[0] * 1.2)
    assert notifier.send_due().outcomes == {}  # not due yet

    clock.now = row["next_try_at"]
    assert notifier.send_due().outcomes == {"retried": 1}
    [row] = rows(database_url)
    assert (row["last_error"], row["next_try_at"] - clock.now) == ("HTTP 429", timedelta(seconds=120))  # Retry-After

    clock.now = row["next_try_at"]
    assert notifier.send_due().outcomes == {"sent": 1}
    [row] = rows(database_url)
    assert (row["status"], row["attempts"], row["sent_at"]) == ("sent", 3, clock.now)
    assert catcher.messages("sales")[0]["@type"] == "MessageCard" and catcher.messages("sales")[0]["text"] == "hi"
    assert len(catcher.messages("sales")) == 1


def test_once_the_backoff_is_spent_the_message_is_failed_with_its_reason(database_url, catcher):
    engine = db.engine_for(database_url)
    at = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)
    with engine.begin() as conn:
        notifications.add(conn, [(7, Notice("big-sale", "SALES_WEBHOOK_URL", "slack", "hi"))], at)
    clock = Clock(at)
    notifier = Notifier(engine, {"SALES_WEBHOOK_URL": catcher.url("sales")}, clock)
    catcher.fail(MAX_ATTEMPTS, status=404)
    for _ in range(MAX_ATTEMPTS):
        notifier.send_due()
        clock.now = rows(database_url)[0]["next_try_at"] or clock.now
    [row] = rows(database_url)
    assert (row["status"], row["attempts"], row["next_try_at"]) == ("failed", MAX_ATTEMPTS, None)
    assert row["last_error"] == f"HTTP 404; still not taken after {MAX_ATTEMPTS} attempts"
    assert catcher.messages() == []
    with engine.connect() as conn:
        assert notifications.summary(conn).counts == {"pending": 0, "sent": 0, "failed": 1}


def test_each_post_is_counted_by_outcome(notify_settings, notify_client, redis_conn, catcher):
    from tests.test_metrics import parse

    catcher.fail(1, status=503)
    post(notify_client, sale(1234.56))
    work(notify_settings, redis_conn)  # big-sale: 503, to retry; ops-copy: its variable unset, failed
    counted = parse(notify_client.get("/metrics", headers=AUTH).get_data(as_text=True))
    assert counted["partnero_sync_notifications_total"] == {
        ("failed", "default"): 1.0, ("retried", "default"): 1.0, ("sent", "default"): 0.0}


def test_replaying_history_announces_nothing(settings, tmp_path, redis_conn, catcher):
    """A notify entry added after deliveries were processed: `replay` (to fill a new column, say)
    applies them again and sends none of their messages."""
    inbox_id = post(create_app(settings).test_client(), sale(1234.56))  # the shipped mappings: no notify
    work(settings, redis_conn)
    notifying = settings.with_overrides(mappings_dir=notify_mappings(tmp_path / "mappings"),
                                        webhook_urls={"SALES_WEBHOOK_URL": catcher.url("sales")})
    assert replay(Services.build(notifying, redis_conn), show_progress=False).processed == 1
    assert status_of(settings.database_url, inbox_id) == "processed"
    assert rows(settings.database_url) == []
