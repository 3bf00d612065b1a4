"""Failure modes that once stalled Salesforce sync silently or failed deliveries for a passing
reason: each test is named for the failure it proves harmless, against the real parts (the HTTPS
Salesforce stand-in, real RQ workers and processes, PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from rq import Queue
from rq.job import JobStatus

from sync.cli import main
from sync.partnero.samples import CUSTOMER, TRANSACTION, sample_delivery
from sync.salesforce import schedule
from sync.services import Services
from sync.settings import SalesforceSettings
from sync.store import db
from sync.store.inbox import webhook_events
from sync.store.outbox import Outbox, crm_commission_changes, crm_outbox
from sync.worker.queues import CRM_QUEUE_NAME, QUEUE_NAME, PartneroWorker
from tests.conftest import MAPPINGS, REDIS_URL, drain_jobs, held_by_another_transaction, salesforce_env
from tests.test_processes import BIN, environment, start, stop, wait_for
from tests.test_salesforce_sync import deliver, outbox_rows, partner, password_login
from tests.warehouse_helpers import envelope

#: An org with every field the shipped partner mapping sends but Partnero_Status__c.
CONTACT_FIELDS = ["LastName", "FirstName", "Email", "Partnero_Partner_Id__c", "Partnero_Commission_Total__c",
                  "Partnero_Commission_Approved__c", "Partnero_Commission_Pending__c", "Partnero_Program__c"]



@pytest.fixture
def services(settings, fake, redis_conn) -> Services:
    return Services.build(settings.with_overrides(salesforce=password_login(fake)), redis_conn)


def customer(key: str, partner_id: str = "ptn_8c1e6f0a") -> dict:
    return envelope("customer.created", "2026-03-14T10:02:54Z", **{**CUSTOMER, "key": key, "partner": partner_id})


# -- Salesforce refuses a whole call --------------------------------------------------------------


def test_a_field_the_org_lacks_is_recorded_on_every_record_of_the_call_and_the_other_objects_go_on(
        services, fake, settings):
    # The org has no Partnero_Status__c on Contact: Salesforce refuses each Contact call as a whole.
    fake.define_object("Contact", prefix="003", required=("LastName",), fields=CONTACT_FIELDS)
    fake.add("Contact", {"LastName": "Already there", "Partnero_Partner_Id__c": "ptn_old"})
    deliver(services, *(partner(id=f"ptn_{i}") for i in range(3)), customer("acct_1", "ptn_old"))
    report = services.flusher().flush()

    assert report.refused_calls == 1 and report.failed == 3
    assert report.synced == 1  # the Account, whose parent Salesforce already has
    rows = outbox_rows(services)
    reason = (f"Contact: field Partnero_Status__c does not exist in this org, or the integration user cannot see "
              f"it ({MAPPINGS / 'partner.yml'})")
    for i in range(3):
        contact = rows[("Contact", f"ptn_{i}")]
        assert (contact["status"], contact["error_code"], contact["error_message"]) == ("failed", "INVALID_FIELD", reason)
        assert contact["next_attempt_at"] > datetime.now(timezone.utc) + timedelta(minutes=50)  # a long backoff
    assert rows[("Account", "acct_1")]["status"] == "synced"

    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "MAPPINGS_DIR": str(MAPPINGS),
           **salesforce_env(fake)}
    errors = CliRunner().invoke(main, ["crm-errors"], env=env)
    assert errors.output.count("INVALID_FIELD: Contact: field Partnero_Status__c does not exist in this org") == 3
    status = CliRunner().invoke(main, ["status"], env=env)
    assert status.exit_code == 1 and "Salesforce refused 3 records" in status.output

    # Not tried again every minute: the next flushes send nothing.
    calls = fake.count("collections")
    for _ in range(3):
        assert services.flusher().flush().calls == 0
    assert fake.count("collections") == calls


def test_records_refused_for_a_missing_field_are_sent_again_once_the_mapping_changes(services, fake, settings, tmp_path,
                                                                                    redis_conn):
    fake.define_object("Contact", prefix="003", required=("LastName",), fields=CONTACT_FIELDS)
    deliver(services, partner())
    services.flusher().flush()
    assert outbox_rows(services)[("Contact", "ptn_8c1e6f0a")]["status"] == "failed"

    mappings = tmp_path / "mappings"  # the fix: the mapping stops sending the field the org lacks
    shutil.copytree(MAPPINGS, mappings)
    path = mappings / "partner.yml"
    text = path.read_text().replace("    Partnero_Status__c: data.status\n", "")
    path.write_text(text.replace("  on_delete:\n    Partnero_Status__c: {value: deleted}\n", ""))
    fixed = Services.build(settings.with_overrides(salesforce=password_login(fake), mappings_dir=mappings), redis_conn)
    assert fixed.flusher().flush().synced == 1
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")["LastName"] == "Lopez"


def test_refused_records_are_probed_again_after_their_long_backoff(services, fake):
    fake.define_object("Contact", prefix="003", required=("LastName",), fields=CONTACT_FIELDS)
    deliver(services, partner())
    services.flusher().flush()
    fake.define_object("Contact", prefix="003", required=("LastName",), fields=None)  # an admin added the field
    assert services.flusher().flush().calls == 0  # still waiting out its backoff
    with services.inbox.engine.begin() as conn:
        conn.execute(crm_outbox.update().values(next_attempt_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert services.flusher().flush().synced == 1


@pytest.mark.parametrize("refusal, code", [
    ("type", "JSON_PARSER_ERROR"), ("access", "INSUFFICIENT_ACCESS"), ("object", "NOT_FOUND")])
def test_every_whole_call_refusal_is_recorded_with_salesforces_code_and_a_readable_reason(
        settings, fake, redis_conn, refusal, code):
    services = Services.build(settings.with_overrides(salesforce=password_login(fake)), redis_conn)
    odd = {**TRANSACTION, "action": "sale-8123-private"}
    deliver(services, partner(), customer("acct_000481"), envelope("transaction.created", "2026-03-14T10:15:31Z", **odd))
    if refusal == "type":
        fake.define_object("Partnero_Transaction__c", types={"Action__c": "double"})
    elif refusal == "access":
        fake.deny("Partnero_Transaction__c")
    else:
        with fake._lock:  # the org lacks the custom object altogether
            del fake._objects["Partnero_Transaction__c"]
    report = services.flusher().flush()
    assert report.synced == 2 and report.refused_calls == 1
    row = outbox_rows(services)[("Partnero_Transaction__c", TRANSACTION["key"])]
    assert row["status"] == "failed" and row["error_code"] == code
    assert row["error_message"].startswith("Partnero_Transaction__c: ")
    assert "transaction.yml" in row["error_message"]
    assert "sale-8123-private" not in row["error_message"]  # Salesforce's text echoes it; ours does not


def test_an_expired_session_that_cannot_be_renewed_is_reported_in_healthz_and_not_retried_in_a_loop(
        settings, fake, redis_conn):
    from app import create_app
    from tests.ops_helpers import AUTH, OPS

    session = SalesforceSettings(mode="session", instance_url=fake.instance_url, session_id=fake.issue_session())
    app = create_app(settings.with_overrides(salesforce=session, dashboard=OPS), redis_connection=redis_conn)
    services = app.extensions["partnero"]
    deliver(services, partner())
    fake.expire_sessions()
    outcome = services.flush_schedule.run_job()
    assert "SALESFORCE_SESSION_ID cannot be renewed" in outcome.text
    health = app.test_client().get("/healthz", headers=AUTH)  # the operator's report
    assert health.status_code == 200  # the web can still serve: Salesforce is not what it serves
    body = health.get_json()
    assert "SALESFORCE_SESSION_ID cannot be renewed" in body["salesforce_problem"]
    assert any("cannot be renewed" in line for line in body["attention"])
    # The next flush is held back an hour or more, not every minute.
    crm = Queue(CRM_QUEUE_NAME, connection=redis_conn)
    [held] = crm.scheduled_job_registry.get_job_ids()
    due = crm.scheduled_job_registry.get_scheduled_time(held)
    assert due > datetime.now(timezone.utc) + timedelta(minutes=55)
    calls = fake.count("collections")
    assert services.flush_schedule.request() is False  # the worker's housekeeping asks in vain meanwhile
    assert fake.count("collections") == calls


# -- quick recovery, gentle while refused -----------------------------------------------------------


def test_salesforce_back_after_an_outage_gets_the_backlog_within_a_minute_and_is_probed_gently_meanwhile(
        services, fake, redis_conn):
    deliver(services, *(partner(id=f"ptn_{i}") for i in range(30)))
    fake.outage = "503"
    crm = Queue(CRM_QUEUE_NAME, connection=redis_conn)
    delays = []
    for _ in range(8):  # eight failed flushes in a row: each probes once
        before = fake.count("outage")
        services.flush_schedule.run_job()
        assert fake.count("outage") == before + 1
        [job_id] = crm.scheduled_job_registry.get_job_ids()
        delays.append((crm.scheduled_job_registry.get_scheduled_time(job_id) - datetime.now(timezone.utc)).total_seconds())
        crm.scheduled_job_registry.remove(job_id)
    assert all(d <= 61 for d in delays), delays  # back within a minute of Salesforce's return
    assert all(d >= 39 for d in delays[4:]), delays  # about one probe a minute while it is away
    assert {r["next_attempt_at"] for r in outbox_rows(services).values()} == {None}  # due at the next flush
    fake.outage = None
    services.flush_schedule.run_job()
    assert len(fake.records("Contact")) == 30


# -- only a delivery's content fails it --------------------------------------------------------------


def test_a_job_killed_by_its_timeout_leaves_its_deliveries_pending(pg_url, redis_server_url, redis_conn):
    from tests.conftest import empty_tables
    from tests.test_worker import row, store

    empty_tables(pg_url)
    # Its lock waits last longer than the job may run (they are bounded, DATABASE_LOCK_TIMEOUT).
    settings = _settings(pg_url, redis_server_url).with_overrides(database_lock_timeout=30)
    [event_id] = store(settings, sample_delivery("partner.created"))
    services = Services.build(settings, redis_conn)
    job = Queue(QUEUE_NAME, connection=redis_conn).enqueue("sync.worker.jobs.process_events", [event_id], job_timeout=2)
    # Another transaction holds the partner's row for longer than the job may run.
    with held_by_another_transaction(pg_url, "INSERT INTO partners (partner_id) VALUES ('ptn_8c1e6f0a')"):
        PartneroWorker([QUEUE_NAME], connection=redis_conn, context=services).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.SCHEDULED  # retried later, not failed
    pending = row(settings, event_id)
    assert pending["status"] == "pending" and "interrupted" in pending["last_error"]
    # It may be what hangs its job: the attempt stays counted, as a lapsed claim's does.
    assert pending["attempts"] == 1


def test_a_worker_killed_mid_job_leaves_its_deliveries_pending_for_the_next_worker(pg_url, redis_server_url,
                                                                                  redis_conn, tmp_path):
    from tests.conftest import empty_tables
    from tests.test_worker import row, store

    empty_tables(pg_url)
    settings = _settings(pg_url, redis_server_url)
    ids = store(settings, *(sample_delivery("partner.created", id=f"ptn_{i}") for i in range(3)), enqueue_to=redis_conn)
    # Its lock waits last longer than the test takes to kill it (DATABASE_LOCK_TIMEOUT).
    env = environment(DATABASE_URL=pg_url, REDIS_URL=redis_server_url, LOG_FORMAT="text", DATABASE_LOCK_TIMEOUT="30")
    blocker = db.make_engine(pg_url)
    conn = blocker.connect()
    transaction = conn.begin()
    # Another transaction holds a partner's row: the worker's job waits on it, mid-job, when it is killed.
    conn.execute(sa.text("INSERT INTO partners (partner_id) VALUES ('ptn_0')"))
    worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
    try:
        # One wake-up, however slow the child: its drain cannot hand over (SLICE_SECONDS) while it waits on the row.
        [job] = drain_jobs(redis_conn)
        wait_for(lambda: job.get_status(refresh=True) == JobStatus.STARTED, what="the job to start")
        time.sleep(0.5)
    finally:
        _kill(worker)
        transaction.rollback()
        conn.close()
        blocker.dispose()
    assert {row(settings, i)["status"] for i in ids} == {"pending"}
    # The dead worker's claims lapse; the next worker's sweep finds the rows and applies them.
    with db.engine_for(pg_url).begin() as c:
        an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        c.execute(webhook_events.update().values(received_at=an_hour_ago, claimed_until=an_hour_ago))
    redis_conn.delete("partnero-sync:wake-up")  # the dead worker's wake-up went with it
    from sync.worker.process import build_worker

    build_worker(Services.build(settings, redis_conn)).work(burst=True)
    assert [row(settings, i)["status"] for i in ids] == ["processed"] * 3


def test_a_schema_that_lags_the_mappings_leaves_deliveries_pending_until_it_is_migrated(database_url, redis_conn,
                                                                                       tmp_path):
    from rq import Retry

    from sync.store import schema
    from sync.worker import jobs
    from tests.test_worker import row, store

    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    path = mappings / "partner.yml"
    path.write_text(path.read_text().replace("    status: data.status\n",
                                             "    status: data.status\n    brand_new_column: data.key\n", 1))
    settings = _settings(database_url, REDIS_URL).with_overrides(mappings_dir=mappings)
    [event_id] = store(settings, sample_delivery("partner.created"))
    services = Services.build(settings, redis_conn)  # the worker's new mappings, before any migration
    assert isinstance(jobs.process_events(services, [event_id]), Retry)  # tried again later
    pending = row(settings, event_id)
    assert pending["status"] == "pending" and "brand_new_column" in pending["last_error"]
    try:
        schema.migrate(services.inbox.engine, services.warehouse)
        assert jobs.process_events(services, [event_id]) == "1 processed, 0 ignored, 0 failed"
    finally:
        with services.inbox.engine.begin() as conn:  # leave the shared database as the others expect it
            conn.execute(sa.text("ALTER TABLE partners DROP COLUMN brand_new_column"))


def _kill(worker) -> None:
    """SIGKILL the worker and all it started: nothing outlives its test."""
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.wait(timeout=10)


def _settings(database_url: str, redis_url: str):
    from sync.settings import Settings

    return Settings(webhook_secrets=("s",), database_url=database_url, redis_url=redis_url, mappings_dir=MAPPINGS)


# -- the flush under concurrency and restarts ---------------------------------------------------------


def test_a_flush_worker_killed_with_sigkill_holds_up_the_next_flush_by_seconds(pg_url, redis_server_url, redis_conn,
                                                                               fake, tmp_path):
    from tests.conftest import empty_tables

    empty_tables(pg_url)
    fake.latency = 0.5
    settings = _settings(pg_url, redis_server_url).with_overrides(salesforce=password_login(fake))
    services = Services.build(settings, redis_conn)
    deliver(services, *(partner(id=f"ptn_{i:04d}") for i in range(2000)))  # ten calls of 200
    env = environment(DATABASE_URL=pg_url, REDIS_URL=redis_server_url, LOG_FORMAT="text", **salesforce_env(fake))
    services.flush_schedule.request()
    worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
    try:
        wait_for(lambda: fake.count("collections") >= 2, what="the flush to be under way")
    finally:
        _kill(worker)
    assert redis_conn.exists(schedule.LOCK)  # the dead flush's lock is still there
    killed_at = time.monotonic()
    fake.latency = 0
    report = services.flush_schedule.run_foreground(wait_seconds=schedule.LOCK_SECONDS + 5)
    assert time.monotonic() - killed_at <= schedule.LOCK_SECONDS + 5
    assert len(fake.records("Contact")) == 2000 and report.synced + fake.count("collections") >= 10


def test_sigterm_stops_a_flush_between_calls_and_a_fresh_job_carries_on(pg_url, redis_server_url, redis_conn, fake,
                                                                       tmp_path):
    from tests.conftest import empty_tables

    empty_tables(pg_url)
    fake.latency = 0.4
    settings = _settings(pg_url, redis_server_url).with_overrides(salesforce=password_login(fake))
    services = Services.build(settings, redis_conn)
    deliver(services, *(partner(id=f"ptn_{i:04d}") for i in range(2000)))
    env = environment(DATABASE_URL=pg_url, REDIS_URL=redis_server_url, LOG_FORMAT="text", **salesforce_env(fake))
    services.flush_schedule.request()
    worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
    try:
        wait_for(lambda: fake.count("collections") >= 2, what="the flush to be under way")
    except AssertionError:
        _kill(worker)
        raise
    stopped_at = time.monotonic()
    output = stop(worker, timeout=20)
    assert worker.returncode == 0, output
    assert time.monotonic() - stopped_at < 5  # between two calls, not after all ten
    sent = len(fake.records("Contact"))
    assert 0 < sent < 2000
    assert not redis_conn.exists(schedule.LOCK)  # released on the way out
    # The next worker picks up the hand-over job and sends the rest.
    fake.latency = 0
    from sync.worker.process import build_worker

    build_worker(Services.build(settings, redis_conn)).work(burst=True)
    assert len(fake.records("Contact")) == 2000


def test_crm_flush_takes_the_workers_lock(services, fake, redis_conn):
    deliver(services, partner())
    lock = redis_conn.lock(schedule.LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    from sync.core.errors import TransientError

    with pytest.raises(TransientError, match="held the lock"):
        services.flush_schedule.run_foreground(wait_seconds=1)
    assert fake.count("collections") == 0
    lock.release()
    assert services.flush_schedule.run_foreground().synced == 1


def test_the_fold_never_deletes_a_change_committed_while_it_ran(pg_url, redis_conn, fake, settings):
    from tests.conftest import empty_tables

    empty_tables(pg_url)
    services = Services.build(_settings(pg_url, "redis://127.0.0.1:6379/15").with_overrides(
        salesforce=password_login(fake)), redis_conn)
    deliver(services, partner())
    outbox = Outbox()
    engine = db.engine_for(pg_url)
    writer = engine.connect()
    writing = writer.begin()
    # A worker's transaction takes an id for its change, and has not committed yet...
    outbox.note_commission_change(writer, ["ptn_8c1e6f0a"])
    # ...while another worker's change, with a later id, commits, and a flush folds.
    with engine.begin() as conn:
        outbox.note_commission_change(conn, ["ptn_other"])
    with engine.begin() as conn:
        assert outbox.fold_commission_changes(conn, "Contact", "partner") == 1
    writing.commit()
    writer.close()
    with engine.connect() as conn:
        left = [p for (p,) in conn.execute(sa.select(crm_commission_changes.c.partner_id))]
    assert left == ["ptn_8c1e6f0a"]  # the next fold sees it


def test_a_record_waiting_for_a_parent_that_never_arrives_follows_its_backoff(services, fake):
    deliver(services, customer("acct_orphan", "ptn_never"), customer("acct_child", "ptn_8c1e6f0a"))
    services.flusher().flush()
    rows = outbox_rows(services)
    assert rows[("Account", "acct_orphan")]["waiting_for"] == "Contact/ptn_never"
    orphan_due = rows[("Account", "acct_orphan")]["next_attempt_at"]
    deliver(services, partner())  # acct_child's parent arrives, and syncs
    report = services.flusher().flush()
    assert report.synced == 2  # the partner, and the child it woke
    after = outbox_rows(services)[("Account", "acct_orphan")]
    assert after["status"] == "waiting" and after["next_attempt_at"] == orphan_due  # not woken by another's parent
