"""Bulk API 2.0 in the flush, through simple-salesforce's session against the HTTPS stand-in
(tests/fakes/salesforce_bulk.py): jobs started above the threshold, read back by later flushes,
every record recorded as a Collections answer would be."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from sync.core import backoff
from sync.core.errors import TransientError
from sync.salesforce import bulk, bulk_flush
from sync.services import Services
from sync.store import bulk_jobs
from tests.test_salesforce_sync import deliver, make_due, outbox_rows, partner, password_login
from tests.warehouse_helpers import envelope

THRESHOLD = 3


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    """A job's next look a few hundredths of a second later, not seconds, and an object's next job
    at once (``test_a_flood_gathers_a_minute_between_an_objects_jobs`` puts the gathering back)."""
    monkeypatch.setattr(backoff, "BULK_POLL_DELAYS", (0.02, 0.05))
    monkeypatch.setattr(backoff, "GATHER_SECONDS", 0)


@pytest.fixture
def services(settings, fake, redis_conn) -> Services:
    return build(settings, fake, redis_conn)


def build(settings, fake, redis_conn, threshold: int = THRESHOLD) -> Services:
    """A worker's services (a fresh one: a new process after another died)."""
    return Services.build(settings.with_overrides(salesforce=password_login(fake), bulk_threshold=threshold),
                          redis_conn)


def partners(n: int, prefix: str = "p") -> list[dict]:
    return [partner(id=f"{prefix}{i}", email=f"{prefix}{i}@example.com", name=f"N{i}", surname=f"S{i}")
            for i in range(n)]


def customers(n: int, prefix: str = "c", parent: str = "p", **changes) -> list[dict]:
    return [envelope("customer.created", "2026-03-14T10:02:54Z",
                     **{"key": f"{prefix}{i}", "partner": f"{parent}{i}", "name": f"Name{i}", "surname": "",
                        "email": f"{prefix}{i}@example.com", "status": "active", **changes})
            for i in range(n)]


def jobs_of(fake, sobject: str) -> list[dict]:
    return [j for j in fake.bulk.jobs() if j["object"] == sobject]


def kept_jobs(services: Services) -> list[bulk_jobs.BulkJob]:
    with services.inbox.engine.connect() as conn:
        return [bulk_jobs._job(r) for r in conn.execute(sa.select(bulk_jobs.crm_bulk_jobs).order_by(
            bulk_jobs.crm_bulk_jobs.c.id))]


def test_below_the_threshold_records_go_in_collections_as_before(services, fake):
    deliver(services, *partners(THRESHOLD))
    report = services.flush_schedule.run_foreground()
    assert report.synced == THRESHOLD
    assert fake.count("collections") == 1 and fake.bulk.jobs() == []


def test_above_the_threshold_one_job_per_object_parents_first_each_record_with_its_id(services, fake):
    deliver(services, *partners(5), *customers(5))
    report = services.flush_schedule.run_foreground()

    assert report.synced == 10 and report.failed == report.waiting == 0
    contacts, accounts = jobs_of(fake, "Contact"), jobs_of(fake, "Account")
    assert [(j["state"], j["records"], j["operation"]) for j in contacts + accounts] == [
        ("JobComplete", 5, "upsert"), ("JobComplete", 5, "upsert")]
    assert fake.count("collections") == 0
    # The Accounts' job was created only once the Contacts' had ended: children after parents.
    creates = [c for c in fake.calls if c.kind in ("bulk_create", "bulk_results")]
    first_account = next(i for i, c in enumerate(creates) if c.kind == "bulk_create" and i > 0)
    assert any(c.kind == "bulk_results" for c in creates[:first_account])
    rows = outbox_rows(services)
    for i in range(5):
        contact = fake.get("Contact", "Partnero_Partner_Id__c", f"p{i}")
        account = fake.get("Account", "Partnero_Customer_Key__c", f"c{i}")
        assert rows[("Contact", f"p{i}")]["salesforce_id"] == contact["Id"]
        assert rows[("Account", f"c{i}")]["salesforce_id"] == account["Id"]
        assert account["Partnero_Partner__c"] == contact["Id"]  # the reference column resolved
        assert (contact["FirstName"], contact["LastName"], contact["Email"]) == (f"N{i}", f"S{i}", f"p{i}@example.com")
    assert {(r["status"], r["bulk_job"]) for r in rows.values()} == {("synced", None)}
    assert [(j.state, j.records, j.done_at is not None) for j in kept_jobs(services)] == [
        ("JobComplete", 5, True), ("JobComplete", 5, True)]


def _normalized(rows: dict, sobject: str, prefix: str) -> dict:
    """The outbox rows of one set, by record number, their ids made comparable."""
    found = {}
    for (obj, key), row in rows.items():
        if obj == sobject and key.startswith(prefix):
            text = (row["error_message"] or "").replace(prefix, "#").replace("pa", "P").replace("pb", "P")
            waiting = (row["waiting_for"] or "").replace("pa", "P").replace("pb", "P")
            found[key[len(prefix):]] = (row["status"], row["error_code"], text, waiting, row["attempts"],
                                        row["salesforce_id"] is not None, row["next_attempt_at"] is not None)
    return found


def test_failed_rows_are_recorded_exactly_as_a_collections_answer_records_them(services, fake):
    """The same records sent both ways: refused with Salesforce's reason, waiting for a parent,
    retried after a passing refusal, synced; the outbox rows come out alike."""
    fake.reject(lambda r: r.get("Name") == "Name1", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Name may not be Name1")
    fake.reject(lambda r: r.get("Name") == "Name2", "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    flusher = services.flusher()
    both = {}
    for prefix, parents, threshold in (("ca", "pa", 0), ("cb", "pb", THRESHOLD)):
        flusher.bulk.threshold = threshold
        deliver(services, *partners(4, parents)[:3])  # the fourth customer's partner never arrives
        services.flush_schedule.run_foreground()
        deliver(services, *customers(6, prefix, parents)[:4])
        services.flush_schedule.run_foreground()
        both[prefix] = _normalized(outbox_rows(services), "Account", prefix)
    assert len(jobs_of(fake, "Account")) == 1 and jobs_of(fake, "Account")[0]["records"] == 4
    assert both["ca"] == both["cb"]
    assert {k: v[:2] for k, v in both["cb"].items()} == {
        "0": ("synced", None), "1": ("failed", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        "2": ("pending", "UNABLE_TO_LOCK_ROW"), "3": ("waiting", "INVALID_FIELD")}
    assert both["cb"]["1"][2] == "Name may not be Name1"
    assert both["cb"]["3"][3] == "Contact/P3"

    # The missing partner arrives: its customer is woken and follows it.
    deliver(services, *partners(4, "pb")[3:])
    services.flush_schedule.run_foreground()
    assert outbox_rows(services)[("Account", "cb3")]["status"] == "synced"


def test_a_job_that_fails_as_a_whole_refuses_each_of_its_records_with_its_error(services, fake):
    fake.bulk.fail_next("InvalidBatch : Field name not found : Partnero_Status__c")
    deliver(services, *partners(5))
    report = services.flush_schedule.run_foreground()
    assert report.failed == 5 and report.refused_calls == 1
    rows = outbox_rows(services)
    assert {(r["status"], r["error_code"]) for r in rows.values()} == {("failed", bulk_flush.JOB_FAILED)}
    message = rows[("Contact", "p0")]["error_message"]
    assert "InvalidBatch : Field name not found : Partnero_Status__c" in message and message.startswith("Contact:")
    assert all(r["next_attempt_at"] is not None and r["bulk_job"] is None for r in rows.values())
    (job,) = kept_jobs(services)
    assert job.state == "Failed" and "Field name not found" in job.error


def test_an_aborted_job_leaves_its_records_due_and_they_go_in_a_new_job(services, fake):
    """Its records are unprocessed (in neither result): due again."""
    fake.bulk.hold()
    deliver(services, *partners(5))
    report = services.flusher().flush()
    assert report.bulk_wait is not None and report.bulk_jobs[0]["state"] == "UploadComplete"
    (job,) = fake.bulk.jobs()
    sf = services.flusher().client.connect()
    sf.session.patch(f"{sf.bulk2_url}ingest/{job['id']}", headers=sf.headers, json={"state": "Aborted"})
    fake.bulk.release()
    services.flush_schedule.run_foreground()
    assert [j["state"] for j in fake.bulk.jobs()] == ["Aborted", "JobComplete"]
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}


def test_a_job_larger_than_its_limit_is_split(services, fake):
    services.flusher().bulk.max_bytes = 400
    deliver(services, *partners(20))
    services.flush_schedule.run_foreground()
    jobs = fake.bulk.jobs()
    uploads = [c for c in fake.calls if c.kind == "bulk_upload"]
    assert len(jobs) >= 3 and all(j["state"] == "JobComplete" and j["records"] > THRESHOLD for j in jobs)
    # Every record went once: in a job, or (the last few, not enough for a job) in a Collections call.
    sent = sum(j["records"] for j in jobs) + sum(c.records for c in fake.calls if c.kind == "collections")
    assert sent == 20 and len(uploads) == len(jobs)
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}


def test_a_worker_killed_while_its_job_runs_leaves_it_to_the_next_flush_which_sends_nothing_twice(
        settings, fake, redis_conn):
    first = build(settings, fake, redis_conn)
    fake.bulk.hold()
    deliver(first, *partners(5))
    report = first.flusher().flush()  # then the worker dies: nothing of it is left but the database
    assert report.bulk_wait is not None
    assert {r["bulk_job"] for r in outbox_rows(first).values()} == {fake.bulk.jobs()[0]["id"]}
    # While the job runs, its records are not due: a flush sends none of them again.
    assert build(settings, fake, redis_conn).flusher().flush().synced == 0
    fake.bulk.release()

    following = build(settings, fake, redis_conn)
    following.flush_schedule.run_foreground()
    assert fake.count("bulk_create") == 1 and fake.count("collections") == 0
    assert {r["status"] for r in outbox_rows(following).values()} == {"synced"}


def test_a_job_left_open_by_a_dead_worker_is_aborted_and_its_records_sent_in_a_new_job(
        settings, fake, redis_conn, monkeypatch):
    first = build(settings, fake, redis_conn)
    deliver(first, *partners(5))

    def dies(self, job_id):
        raise SystemExit("the worker died before closing its job")

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(bulk.BulkApi, "close", dies)
        first.flusher().flush()
    assert [j["state"] for j in fake.bulk.jobs()] == ["Open"]
    # Its flush may be uploading still (a long upload outlives the flush lock): left alone a while.
    later = build(settings, fake, redis_conn)
    assert later.flusher().flush().bulk_wait > 60 and fake.count("bulk_status") == 0
    (job,) = kept_jobs(later)
    with later.inbox.engine.begin() as conn:
        conn.execute(bulk_jobs.crm_bulk_jobs.update().values(created_at=job.created_at - bulk_flush.OPEN_GRACE))

    later.flush_schedule.run_foreground()
    jobs = fake.bulk.jobs()
    assert [(j["state"], j["processed"]) for j in jobs] == [("Aborted", 0), ("JobComplete", 5)]
    assert fake.count("bulk_abort") == 1
    assert {r["status"] for r in outbox_rows(first).values()} == {"synced"}


def test_an_upload_that_cannot_reach_salesforce_leaves_a_job_the_next_flush_aborts_at_once(
        services, fake, monkeypatch):
    deliver(services, *partners(5))
    upload = bulk.BulkApi.upload

    def in_an_outage(self, job_id, data):
        fake.outage = "503"  # Salesforce goes away between the job's creation and its upload
        return upload(self, job_id, data)

    with monkeypatch.context() as patched, pytest.raises(TransientError):
        patched.setattr(bulk.BulkApi, "upload", in_an_outage)
        services.flusher().flush()
    fake.outage = None
    services.flush_schedule.run_foreground()
    assert [j["state"] for j in fake.bulk.jobs()] == ["Aborted", "JobComplete"]
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}


def test_an_expired_session_is_renewed_and_the_bulk_call_repeated(services, fake):
    fake.bulk.hold()
    deliver(services, *partners(5))
    services.flusher().flush()
    logins = fake.count("login")
    fake.expire_sessions()
    fake.bulk.release()
    report = services.flush_schedule.run_foreground()
    assert report.synced == 5 and fake.count("login") == logins + 1


def test_a_record_changed_while_in_its_job_keeps_its_new_version(services, fake):
    fake.bulk.hold()
    deliver(services, *partners(5))
    services.flusher().flush()
    deliver(services, partner(id="p2", email="p2@example.com", name="Renamed", surname="S2",
                              updated_at="2026-03-15T00:00:00.000000Z"))
    fake.bulk.release()
    services.flush_schedule.run_foreground()
    rows = outbox_rows(services)
    assert rows[("Contact", "p2")]["bulk_job"] is None
    assert fake.get("Contact", "Partnero_Partner_Id__c", "p2")["FirstName"] == "Renamed"
    assert {r["status"] for r in rows.values()} == {"synced"}
    assert fake.count("collections") == 1  # the new version alone, after the job



def test_status_ops_and_the_dashboard_show_a_running_job(settings, fake, redis_conn, tmp_path):
    import json

    from click.testing import CliRunner
    from rq import Queue

    from app import create_app
    from sync.cli import main
    from sync.worker.process import build_worker
    from sync.worker.queues import CRM_QUEUE_NAME
    from tests.conftest import salesforce_env
    from tests.ops_helpers import AUTH, Page, ops_settings

    settings = ops_settings(settings, tmp_path).with_overrides(salesforce=password_login(fake),
                                                               bulk_threshold=THRESHOLD)
    services = Services.build(settings, redis_conn)
    fake.bulk.hold()
    deliver(services, *partners(5))
    services.flush_schedule.request()
    build_worker(services).work(burst=True)  # the flush job, as a worker runs it
    (job,) = fake.bulk.jobs()

    (flush,) = [Queue(CRM_QUEUE_NAME, connection=redis_conn).fetch_job(i)
                for i in Queue(CRM_QUEUE_NAME, connection=redis_conn).finished_job_registry.get_job_ids()]
    assert f"bulk job {job['id']} (5 Contact): UploadComplete since " in flush.description
    assert flush.meta["progress"].startswith(f"bulk job {job['id']} (5 Contact): UploadComplete")
    assert "p0@example.com" not in flush.description + str(flush.return_value())

    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "MAPPINGS_DIR": str(settings.mappings_dir), **salesforce_env(fake)}
    text = CliRunner().invoke(main, ["status"], env=env).stdout
    assert f"bulk job {job['id']}" in text and "Contact, 5 records, UploadComplete, since 20" in text
    report = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    (shown,) = report["salesforce"]["bulk_jobs"]
    assert {k: shown[k] for k in ("job_id", "object", "records", "state")} == {
        "job_id": job["id"], "object": "Contact", "records": 5, "state": "UploadComplete"}

    page = Page(create_app(settings).test_client().get("/ops", headers=AUTH).data)
    assert page.text(f"bulk-job-{job['id']}") == "Bulk job Contact UploadComplete: 5 records"

    fake.bulk.release()
    services.flush_schedule.run_foreground()
    assert json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)["salesforce"]["bulk_jobs"] == []


def test_a_job_refused_at_its_creation_refuses_its_records_and_the_flush_goes_on(services, fake):
    fake.deny("Contact")
    deliver(services, *partners(5), *customers(5))
    report = services.flush_schedule.run_foreground()
    assert report.org_refusal is None and report.refused_calls == 1
    rows = outbox_rows(services)
    contact = rows[("Contact", "p0")]
    assert (contact["status"], contact["error_code"]) == ("failed", "INSUFFICIENT_ACCESS")
    assert contact["error_message"].startswith("Contact: the integration user has no access to this object")
    assert {r["status"] for k, r in rows.items() if k[0] == "Contact"} == {"failed"}
    # The Accounts went on, in their own job, and wait for their partners.
    assert [j["object"] for j in fake.bulk.jobs()] == ["Account"]
    assert {(r["status"], r["waiting_for"]) for k, r in rows.items() if k == ("Account", "c0")} == {
        ("waiting", "Contact/p0")}


def test_no_job_is_started_past_the_api_budget(settings, fake, redis_conn):
    """The org's usage is read afresh before a job is created: at the budget, the flush pauses
    instead, and the records wait."""
    from sync.settings import ApiBudget

    services = Services.build(settings.with_overrides(salesforce=password_login(fake), bulk_threshold=THRESHOLD,
                                                      salesforce_api_budget=ApiBudget(percent=50)), redis_conn)
    deliver(services, *partners(5))
    fake.api_max, fake.api_remaining = 100, 51  # others used 49 today: the look at the usage reaches 50
    report = services.flush_schedule.run_foreground()
    assert fake.count("limits") == 1 and fake.count("bulk_create") == 0 and fake.count("collections") == 0
    assert report.stopped and services.flush_schedule.paused() is not None
    assert {(r["status"], r["bulk_job"]) for r in outbox_rows(services).values()} == {("pending", None)}


def test_hard_deletes_stay_one_rest_call_each_beside_a_job(settings, fake, redis_conn, tmp_path):
    import shutil

    mappings = tmp_path / "mappings"
    shutil.copytree(settings.mappings_dir, mappings)
    path = mappings / "partner.yml"
    path.write_text(path.read_text().replace("  commission_total:", "  hard_delete: true\n  commission_total:"))
    services = Services.build(settings.with_overrides(salesforce=password_login(fake), mappings_dir=mappings,
                                                      bulk_threshold=THRESHOLD), redis_conn)
    deliver(services, *partners(2, "gone"))
    services.flush_schedule.run_foreground()
    deliver(services, *(envelope("partner.deleted", "2026-04-01T00:00:00Z", id=f"gone{i}") for i in range(2)),
            *partners(5))
    services.flush_schedule.run_foreground()
    assert [j["records"] for j in fake.bulk.jobs()] == [5]  # the upserts, and only them
    assert fake.count("delete") == 2
    assert fake.get("Contact", "Partnero_Partner_Id__c", "gone0") is None
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}


def test_a_flood_gathers_a_minute_between_an_objects_jobs(services, fake, monkeypatch):
    """An object's next job starts no sooner than GATHER_SECONDS after its last: meanwhile its
    records wait (none goes in Collections calls), and so do its children."""
    monkeypatch.setattr(backoff, "GATHER_SECONDS", 60)
    deliver(services, *partners(5))
    services.flush_schedule.run_foreground()
    assert len(jobs_of(fake, "Contact")) == 1
    deliver(services, *partners(5, prefix="q"), *customers(5, parent="q"))
    report = services.flusher().flush()
    assert 50 < report.bulk_wait <= 60
    assert len(fake.bulk.jobs()) == 1 and fake.count("collections") == 0
    assert {r["status"] for k, r in outbox_rows(services).items() if k[1].startswith(("q", "c"))} == {"pending"}
    (first,) = kept_jobs(services)
    with services.inbox.engine.begin() as conn:  # a minute on
        conn.execute(sa.update(bulk_jobs.crm_bulk_jobs).values(created_at=first.created_at - timedelta(seconds=61)))
    services.flush_schedule.run_foreground()
    assert [j["object"] for j in fake.bulk.jobs()] == ["Contact", "Contact", "Account"]
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}


def test_a_job_holds_at_most_max_records_the_rest_go_in_the_next(services, fake):
    services.flusher().bulk.max_records = 4
    deliver(services, *partners(10))
    services.flush_schedule.run_foreground()
    assert [j["records"] for j in fake.bulk.jobs()] == [4, 4] and fake.count("collections") == 1
    assert {r["status"] for r in outbox_rows(services).values()} == {"synced"}
