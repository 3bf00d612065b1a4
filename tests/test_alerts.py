"""The operator's alerts (sync.ops.alerts, sync.ops.monitor, sync.store.alerts): each condition
raised once and resolved once, one sender however many monitors, a failing endpoint retried,
restarts, reminders, links, no value of a delivery in any body, the test command, and what
status, /ops and /metrics show. The endpoint is the HTTPS catcher (tests/fakes/catcher.py)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from sync.ops import alerts as ops_alerts
from sync.ops import monitor as ops_monitor
from sync.ops.monitor import Monitor
from sync.ops.snapshot import take
from sync.ops.status import render
from sync.partnero.samples import sample_delivery
from sync.salesforce import schedule
from sync.services import Services
from sync.settings import SalesforceSettings, Settings
from sync.store import db
from sync.store import notifications
from sync.store.alerts import AlertStore, alert_sender, alerts
from sync.store.history import HistoryStore
from sync.store.inbox import Delivery, DeliveryStatus, Inbox
from sync.mapping import Notice
from sync.store.org_checks import OrgChecks, Verdict
from sync.store.outbox import crm_outbox
from sync.store.runs import Runs, RunStatus
from tests.conftest import MAPPINGS, SECRETS, migrate
from tests.fakes.catcher import Catcher
from tests.ops_helpers import post, work

MARKER = "MARKER-7f3a"
START = datetime(2026, 6, 1, 14, 2, tzinfo=timezone.utc)
SALESFORCE = SalesforceSettings.from_env({"SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com",
                                          "SALESFORCE_SESSION_ID": "not-used"})


class Clock:
    """The monitor's time, moved by the test."""

    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    migrate(url)
    return url


def alert_settings(url: str, redis_url: str, catcher: Catcher | None, **changes) -> Settings:
    return Settings(webhook_secrets=SECRETS, database_url=url, redis_url=redis_url, mappings_dir=MAPPINGS,
                    alert_webhook_url=catcher.url("alerts") if catcher else None, **changes)


@dataclass
class Setup:
    settings: Settings
    services: Services
    clock: Clock

    def monitor(self, **options) -> Monitor:
        return Monitor(self.services, **options)


@pytest.fixture
def setup(sqlite_url, redis_server_url, redis_conn, catcher) -> Setup:
    clock = Clock()
    settings = alert_settings(sqlite_url, redis_server_url, catcher, salesforce=SALESFORCE,
                              public_url="https://sync.example.com")
    return Setup(settings, Services.build(settings, redis_conn, clock=clock), clock)


def texts(catcher: Catcher) -> list[str]:
    return [message["text"] for message in catcher.messages("alerts")]


# -- each condition, crafted in the database or Redis, raised once and resolved once -----------


def _stored(s: Setup, status: str, at: datetime) -> None:
    """A delivery in the inbox, arrived ``at``, left in ``status``."""
    inbox = Inbox(s.services.inbox.engine, Clock(at))
    inbox.store_many([Delivery(f'{{"event": "partner.created", "n": "{uuid.uuid4()}"}}'.encode(), "partner.created",
                               DeliveryStatus.PENDING, "p1")])
    with s.services.inbox.engine.begin() as conn:
        conn.execute(sa.text("UPDATE webhook_events SET status = :status WHERE status = 'pending'"),
                     {"status": status})


def _failed_deliveries(s: Setup):
    _stored(s, "failed", START)
    return lambda: _delete(s.services.inbox.engine, "webhook_events")


def _stuck_backlog(s: Setup):
    _stored(s, "pending", START - timedelta(minutes=40))
    return lambda: _delete(s.services.inbox.engine, "webhook_events")


def _refused_records(s: Setup):
    engine = s.services.inbox.engine
    with engine.begin() as conn:
        for i, code in enumerate(["INVALID_FIELD", "INVALID_FIELD", "REQUIRED_FIELD_MISSING"]):
            conn.execute(crm_outbox.insert().values(
                object="Contact", external_id=f"x{i}", entity_id=f"x{i}", entity="partner", status="failed",
                sync_version=START, error_code=code, error_message=f"bad value {MARKER}", error_at=START,
                program="default"))
    return lambda: _delete(engine, "crm_outbox")


def _problem(code: str):
    def craft(s: Setup):
        s.services.queue.connection.set(schedule.PROBLEM, json.dumps(
            {"code": code, "message": f"refused {MARKER}", "since": START.isoformat()}))
        return lambda: s.services.queue.connection.delete(schedule.PROBLEM)
    return craft


def _paused(s: Setup):
    s.services.queue.connection.set(schedule.PAUSED, json.dumps(
        {"used": 90000, "allowance": 100000, "budget": 80000, "since": START.isoformat()}))
    return lambda: s.services.queue.connection.delete(schedule.PAUSED)


def _misfit(s: Setup):
    checks = OrgChecks(s.services.inbox.engine, s.clock)
    checks.record("sig", Verdict.MISFIT, [{"object": "Contact", "field": "Partnero_Id__c", "problem": "missing"}])
    return lambda: checks.record("sig", Verdict.FITS, [])


def _stopped_backfill(s: Setup):
    found = Runs(s.services.inbox.engine, s.clock)
    run = found.start(("partners",), None)
    found.finish(run.id, RunStatus.FAILED, error=f"HTTP 500 {MARKER}")
    return lambda: found.finish(run.id, RunStatus.FINISHED)


def _no_worker(s: Setup):
    s.services.queue.wake()
    return lambda: s.services.queue.queue.empty()


def _failed_jobs(s: Setup):
    registry = s.services.queue.queue.failed_job_registry
    s.services.queue.connection.zadd(registry.key, {"job-1": 9999999999})
    return lambda: s.services.queue.connection.delete(registry.key)


def _failed_notification(s: Setup):
    engine = s.services.inbox.engine
    with engine.begin() as conn:
        notifications.add(conn, [(1, Notice("big-sale", "SALES_WEBHOOK_URL", "slack", f"sale {MARKER}"))],
                          START - timedelta(hours=2))
    (row,) = notifications.claim(engine, START)
    notifications.not_sent(engine, row.id, f"HTTP 404 {MARKER}", None)  # failed for good
    return lambda: _delete(engine, "notifications")


def _delete(engine, table: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {table}"))


CONDITIONS = {
    "deliveries_failed/default": (_failed_deliveries, "1 deliveries failed (program default)"),
    "backlog_stuck/default": (_stuck_backlog, "the oldest pending delivery waited 40 min"),
    "crm_refused/default/Contact": (_refused_records,
                                    "Salesforce refused 3 Contact records (program default): INVALID_FIELD x2, "
                                    "REQUIRED_FIELD_MISSING x1"),
    "crm_calls_refused/INSUFFICIENT_ACCESS": (_problem("INSUFFICIENT_ACCESS"),
                                              "Salesforce refuses every call (INSUFFICIENT_ACCESS)"),
    "crm_session/INVALID_SESSION_ID": (_problem("INVALID_SESSION_ID"), "session expired and cannot be renewed"),
    "api_budget": (_paused, "paused at the API budget (90000 of 100000 daily requests, budget 80000)"),
    "org_misfit": (_misfit, "does not fit the mappings: 1 problems (Contact)"),
    "backfill_stopped/default/1": (_stopped_backfill, "backfill #1 failed at partners page 1 (program default)"),
    "no_worker": (_no_worker, "1 jobs wait and no worker listens"),
    "jobs_failed": (_failed_jobs, "1 jobs are in RQ's failed registry"),
    "notifications_failed/default": (_failed_notification,
                                     "1 of the mappings' notifications failed (program default)"),
}


@pytest.mark.parametrize("key", list(CONDITIONS))
def test_each_condition_is_raised_once_and_resolved_once(setup, catcher, key):
    craft, said = CONDITIONS[key]
    monitor = setup.monitor()
    assert monitor.tick() and catcher.messages("alerts") == []  # all well: nothing sent
    undo = craft(setup)
    for _ in range(3):
        monitor.tick()
        setup.clock.advance(seconds=30)
    raised = catcher.messages("alerts")
    assert len(raised) == 1, texts(catcher)
    assert raised[0]["text"].startswith("[partnero-sync] Needs attention: ") and said in raised[0]["text"]
    assert "since 14:02 UTC" in raised[0]["text"]
    assert AlertStore(setup.services.inbox.engine).summary().open_keys == (key,)
    undo()
    for _ in range(3):
        monitor.tick()
        setup.clock.advance(seconds=30)
    sent = texts(catcher)
    assert len(sent) == 2 and sent[1].startswith("[partnero-sync] Resolved: ") and said in sent[1], sent
    assert AlertStore(setup.services.inbox.engine).summary().open == 0
    assert not any(MARKER in text for text in sent)


def test_links_to_ops_filtered_to_the_condition(setup, catcher):
    _failed_deliveries(setup)
    setup.monitor().tick()
    assert texts(catcher)[0].endswith(" https://sync.example.com/ops?program=default&status=failed")


def test_no_link_without_public_url(setup, catcher, redis_conn):
    settings = setup.settings.with_overrides(public_url=None)
    _failed_deliveries(setup)
    Monitor(Services.build(settings, redis_conn, clock=setup.clock)).tick()
    assert "http" not in texts(catcher)[0]


def test_a_source_that_cannot_be_read_resolves_nothing(setup, catcher):
    _no_worker(setup)
    monitor = setup.monitor()
    monitor.tick()
    snapshot = take(setup.services)
    snapshot.queue = None
    snapshot.unavailable["redis"] = "redis unavailable"
    ops_alerts.reconcile(monitor.store, snapshot, timedelta(hours=6))
    assert monitor.store.summary().open_keys == ("no_worker",)


def test_a_reminder_after_the_quiet_interval_while_it_stands(setup, catcher):
    _failed_deliveries(setup)
    monitor = setup.monitor()
    monitor.tick()
    setup.clock.advance(hours=5, minutes=59)
    monitor.tick()
    assert len(texts(catcher)) == 1
    _stored(setup, "failed", START)  # one more failed since: the reminder tells the count as it is now
    setup.clock.advance(minutes=2)
    monitor.tick()
    monitor.tick()
    sent = texts(catcher)
    assert len(sent) == 2 and sent[1].startswith("[partnero-sync] Still needs attention: 2 deliveries failed")


# -- one sender ---------------------------------------------------------------------------------


def test_two_monitors_on_their_own_engines_racing_send_each_message_once(
        database_url, redis_server_url, redis_conn, catcher):
    settings = alert_settings(database_url, redis_server_url, catcher)
    clock = Clock()
    first = Services.build(settings, redis_conn, clock=clock)
    _failed_deliveries(Setup(settings, first, clock))
    monitors = [Monitor(first)]
    for _ in range(3):  # each with an engine of its own, as another process has
        other = Services.build(settings, redis_conn, clock=clock)
        other.inbox.engine = db.make_engine(database_url)
        monitors.append(Monitor(other))
    held = []
    start = threading.Barrier(len(monitors))

    def race(monitor: Monitor) -> None:
        start.wait()
        for _ in range(5):
            held.append((monitor.holder, monitor.tick()))

    threads = [threading.Thread(target=race, args=(m,)) for m in monitors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(catcher.messages("alerts")) == 1
    assert len({holder for holder, did in held if did}) == 1  # one holder for the lease's life


def test_the_lease_passes_on_when_it_expires_or_is_given_up(setup, catcher):
    first, second = setup.monitor(), setup.monitor()
    assert first.tick() and not second.tick()
    setup.clock.advance(seconds=first.lease_seconds + 1)
    assert second.tick() and not first.tick()
    second.stop()
    assert first.tick()


def test_the_lease_is_taken_once_on_every_database(warehouse_url):
    store = AlertStore(db.engine_for(warehouse_url))
    assert store.hold("a", START, 60) and store.hold("a", START, 60)  # renewed at the same instant (MariaDB)
    assert not store.hold("b", START + timedelta(seconds=59), 60)
    assert store.hold("b", START + timedelta(seconds=61), 60)
    store.raise_alert("deliveries_failed/default", "deliveries_failed", "default", {"deliveries": 2}, START)
    (alert,) = store.due(START)
    store.failed(alert, START, "HTTP 503", START + timedelta(seconds=30))
    assert store.due(START + timedelta(seconds=29)) == []
    found = store.summary()
    assert (found.open, found.failing, found.attempts, found.last_error) == (1, 1, 1, "HTTP 503")


# -- a failing endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["503", "429", "timeout", "refused"])
def test_a_failing_endpoint_is_retried_and_the_message_arrives_once(setup, catcher, failure, monkeypatch):
    if failure == "503":
        catcher.fail(2, status=503)
    elif failure == "429":
        catcher.fail(1, status=429, retry_after=120)
    elif failure == "refused":
        catcher.fail(1, status=404)
    else:  # it hangs past the sender's time-out, then fails
        monkeypatch.setattr(ops_alerts.webhook, "TIMEOUT", (2, 0.5))
        catcher.fail(1, status=503)
        catcher.slow(1.5)
    _failed_deliveries(setup)
    monitor = setup.monitor()
    monitor.tick()
    _wait_until(lambda: len(catcher.posted) == 1)
    catcher.slow(0)
    found = monitor.store.summary()
    assert found.failing == 1 and found.attempts == 1 and catcher.messages("alerts") == []
    status = render(take(setup.services), "on")
    assert "failing" in status and "1 attempts" in status and catcher.url("alerts") not in status
    monitor.tick()  # not due yet: no post
    assert len(catcher.posted) == 1
    wait = {"503": 30, "429": 120, "timeout": 30, "refused": 1800}[failure]
    setup.clock.advance(seconds=wait * 1.2 + 1)
    for _ in range(4):
        monitor.tick()
        setup.clock.advance(seconds=40 * 1.2 + 1)
    assert len(catcher.messages("alerts")) == 1
    assert monitor.store.summary().failing == 0


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def test_a_restart_neither_repeats_nor_loses(setup, catcher, redis_conn):
    _failed_deliveries(setup)
    _misfit(setup)
    catcher.fail(1, status=503)
    setup.monitor().tick()  # the first message fails: both stay owed
    assert catcher.messages("alerts") == []
    setup.clock.advance(minutes=5)
    restarted = Monitor(Services.build(setup.settings, redis_conn, clock=setup.clock))
    restarted.tick()
    assert len(catcher.messages("alerts")) == 2
    again = Monitor(Services.build(setup.settings, redis_conn, clock=setup.clock))
    setup.clock.advance(minutes=5)
    again.tick()
    assert len(catcher.messages("alerts")) == 2


def test_a_task_that_raises_stops_neither_the_others_nor_the_alerts(setup, catcher):
    seen = []

    def broken(snapshot):
        raise RuntimeError("boom")

    _failed_deliveries(setup)
    monitor = setup.monitor(tasks=[broken, lambda snapshot: seen.append(snapshot.taken_at)])
    assert monitor.tick()
    assert seen == [START] and len(catcher.messages("alerts")) == 1


def test_the_monitor_thread_ticks_and_stops(setup, catcher):
    _failed_deliveries(setup)
    monitor = setup.monitor(tick_seconds=0.05).start()
    try:
        catcher.wait_for(1, hook="alerts", timeout=10)
    finally:
        monitor.stop()
    with setup.services.inbox.engine.connect() as conn:
        assert conn.execute(sa.select(alert_sender.c.holder)).scalar() is None
    assert len(catcher.messages("alerts")) == 1


def test_a_failed_notification_stands_a_day_then_clears_by_itself(setup, catcher):
    _failed_notification(setup)  # written two hours before START
    monitor = setup.monitor()
    monitor.tick()
    assert "1 of the mappings' notifications failed" in render(take(setup.services), "on")
    setup.clock.advance(hours=21, minutes=59)
    monitor.tick()
    assert AlertStore(setup.services.inbox.engine).summary().open_keys == ("notifications_failed/default",)
    setup.clock.advance(minutes=2)  # a day after it was written: no longer a concern, though still failed
    monitor.tick()
    assert [text.split(":")[0] for text in texts(catcher)] == [
        "[partnero-sync] Needs attention", "[partnero-sync] Still needs attention", "[partnero-sync] Resolved"]
    assert re.search(r"^Notifications +pending 0, sent 0, failed 1$", render(take(setup.services), "on"), re.M)


def test_every_processs_monitor_samples_the_charts_history(setup, catcher):
    """``monitor.start`` (what every worker and web process runs) writes the minute's samples."""
    watching = ops_monitor.start(setup.services)  # its first tick at once
    try:
        minute = START.replace(second=0)
        deadline = time.monotonic() + 10
        while not HistoryStore(setup.services.inbox.engine).at(minute) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watching.stop()
    assert list(HistoryStore(setup.services.inbox.engine).at(minute)) == ["default"]


# -- no value of a delivery ----------------------------------------------------------------------


def _marked(value):
    """Every string of a delivery holds the marker (the amount too: the delivery fails)."""
    if isinstance(value, dict):
        return {k: _marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marked(v) for v in value]
    return f"{MARKER}-{value}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


@pytest.mark.parametrize("fmt", ["slack", "teams", "json"])
def test_no_value_of_the_deliveries_behind_an_alert_is_in_its_body(setup, catcher, redis_conn, fmt, whole_drains):
    from app import create_app

    settings = setup.settings.with_overrides(alert_webhook_format=fmt, salesforce=SalesforceSettings())
    client = create_app(settings, redis_connection=redis_conn).test_client()
    for event in ("transaction.created", "partner.created", "customer.created"):
        document = _marked(sample_delivery(event))
        document["event"] = event
        post(client, document)
    work(settings, redis_conn)
    with setup.services.inbox.engine.connect() as conn:
        failed = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE status = 'failed'")).scalar()
    assert failed >= 1
    _refused_records(setup)
    _stopped_backfill(setup)
    _problem("INVALID_SESSION_ID")(setup)
    monitor = Monitor(Services.build(settings.with_overrides(salesforce=SALESFORCE), redis_conn, clock=setup.clock))
    monitor.tick()
    setup.clock.advance(hours=7)
    monitor.tick()  # reminders
    bodies = [p.raw.decode() for p in catcher.posted]
    assert len(bodies) >= 8
    assert not [body for body in bodies if MARKER in body or "maria" in body.lower()]


# -- the test command, and what is shown ---------------------------------------------------------


def _cli_env(url: str, redis_url: str, catcher: Catcher | None) -> dict[str, str]:
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(MAPPINGS),
           "PARTNERO_WEBHOOK_SECRET": SECRETS[0]}
    if catcher is not None:
        env |= {"ALERT_WEBHOOK_URL": catcher.url("alerts"), "REQUESTS_CA_BUNDLE": catcher.ca_bundle}
    return env


def test_alerts_test_command_sends_and_is_shown_as_the_last_alert(sqlite_url, redis_server_url, redis_conn, catcher):
    from click.testing import CliRunner

    from sync.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["alerts", "test"], env=_cli_env(sqlite_url, redis_server_url, catcher))
    assert result.exit_code == 0, result.output
    assert "sent (HTTP 200)" in result.output and catcher.url("alerts") not in result.output
    assert catcher.messages("alerts")[0]["text"].startswith("[partnero-sync] Test alert")
    status = runner.invoke(main, ["status"], env=_cli_env(sqlite_url, redis_server_url, catcher)).output
    assert "last sent" in status and "test alert, sent (HTTP 200)" in status
    catcher.fail(1, status=500)
    failed = runner.invoke(main, ["alerts", "test"], env=_cli_env(sqlite_url, redis_server_url, catcher))
    assert failed.exit_code == 1 and "failed: HTTP 500" in failed.output
    as_json = json.loads(runner.invoke(main, ["status", "--json"],
                                       env=_cli_env(sqlite_url, redis_server_url, catcher)).output)
    assert as_json["alerts"]["enabled"] and as_json["alerts"]["last_outcome"] == "failed: HTTP 500"
    assert catcher.url("alerts") not in json.dumps(as_json)


def test_alerts_test_command_with_alerts_off(sqlite_url, redis_server_url, redis_conn):
    from click.testing import CliRunner

    from sync.cli import main

    result = CliRunner().invoke(main, ["alerts", "test"], env=_cli_env(sqlite_url, redis_server_url, None))
    assert result.exit_code == 1 and "alerts are off" in result.output
    status = CliRunner().invoke(main, ["status"], env=_cli_env(sqlite_url, redis_server_url, None)).output
    assert "Alerts" in status and "off (ALERT_WEBHOOK_URL is not set)" in status


def test_ops_and_metrics_show_a_failing_endpoint(setup, catcher, redis_conn):
    from app import create_app
    from tests.ops_helpers import AUTH, OPS

    catcher.fail(1, status=503)
    _failed_deliveries(setup)
    setup.monitor().tick()
    client = create_app(setup.settings.with_overrides(dashboard=OPS), redis_connection=redis_conn).test_client()
    page = client.get("/ops", headers=AUTH).get_data(as_text=True)
    assert 'id="alerts-failing"' in page and "HTTP 503" in page and "1 attempts" in page
    assert catcher.url("alerts") not in page
    scraped = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert "partnero_sync_alerts_open 1.0" in scraped and "partnero_sync_alerts_failing 1.0" in scraped


def test_metrics_count_each_condition_that_stands_by_kind_and_program(setup, redis_conn):
    """partnero_sync_needs_attention: the alerts' conditions, for Prometheus's rules
    (deploy/prometheus/alerts.yml), the session that cannot be renewed among them."""
    from app import create_app
    from tests.ops_helpers import AUTH, OPS

    client = create_app(setup.settings.with_overrides(dashboard=OPS), redis_connection=redis_conn).test_client()
    assert "partnero_sync_needs_attention{" not in client.get("/metrics", headers=AUTH).get_data(as_text=True)
    _failed_deliveries(setup)
    _refused_records(setup)
    _problem("INVALID_SESSION_ID")(setup)
    scraped = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    found = sorted(line for line in scraped.splitlines() if line.startswith("partnero_sync_needs_attention{"))
    assert found == ['partnero_sync_needs_attention{kind="crm_refused",program="default"} 1.0',
                     'partnero_sync_needs_attention{kind="crm_session",program=""} 1.0',
                     'partnero_sync_needs_attention{kind="deliveries_failed",program="default"} 1.0']


def test_settings_check_the_alert_variables():
    from sync.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ALERT_WEBHOOK_FORMAT"):
        Settings.from_env({"ALERT_WEBHOOK_FORMAT": "discord"})
    with pytest.raises(ConfigurationError, match="ALERT_REMIND_AFTER"):
        Settings.from_env({"ALERT_REMIND_AFTER": "soon"})
    with pytest.raises(ConfigurationError, match="PUBLIC_URL"):
        Settings.from_env({"PUBLIC_URL": "example.com"})
    secret = "https://hooks.slack.com/services/T000/B000/secret-token"
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"ALERT_WEBHOOK_URL": "ftp://hooks/secret-token"})
    assert "secret-token" not in str(refused.value)
    found = Settings.from_env({"ALERT_WEBHOOK_URL": secret, "ALERT_REMIND_AFTER": "90m", "PUBLIC_URL": "https://x.io/"})
    assert found.alert_remind_after == timedelta(minutes=90) and found.public_url == "https://x.io"
    assert "secret-token" not in repr(found)


def test_the_alert_tables_are_in_the_schema():
    assert {"operator_alerts", "operator_alert_sender"} <= set(db.metadata.tables) and alerts.c.condition_key is not None


def test_with_alerts_off_and_no_task_a_tick_reads_nothing(sqlite_url, redis_server_url, redis_conn):
    services = Services.build(alert_settings(sqlite_url, redis_server_url, None), redis_conn, clock=Clock())
    assert not Monitor(services).tick()
    seen = []
    assert Monitor(services, tasks=[seen.append]).tick() and len(seen) == 1  # the tasks still run
    with services.inbox.engine.connect() as conn:
        assert conn.execute(sa.select(alerts)).all() == []
