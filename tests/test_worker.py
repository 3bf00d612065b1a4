"""The job and the worker, run by real RQ workers against real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from rq import Queue
from rq.job import JobStatus

from sync.core import backoff
from sync.core.errors import TransientError
from sync.partnero.samples import sample_delivery
from sync.pipeline.processor import Processor
from sync.services import Services
from sync.settings import Settings
from sync.store import db
from sync.store.inbox import Delivery, DeliveryStatus, Inbox, webhook_events
from sync.worker import jobs
from sync.worker.process import build_worker
from sync.worker.queues import QUEUE_NAME, JobQueue, PartneroWorker
from tests.conftest import DEAD_PG_URL, MAPPINGS, drain_jobs


def store(settings, *documents, enqueue_to=None) -> list[int]:
    inbox = Inbox(db.engine_for(settings.database_url))
    deliveries = [Delivery(json.dumps(d).encode(), d["event"], DeliveryStatus.PENDING) for d in documents]
    stored = inbox.store_many(deliveries)
    ids = [stored[d.fingerprint].id for d in deliveries]
    if enqueue_to is not None:
        JobQueue(enqueue_to).wake()
    return ids


def row(settings, event_id: int) -> dict:
    with db.engine_for(settings.database_url).connect() as conn:
        return dict(conn.execute(sa.select(webhook_events).where(webhook_events.c.id == event_id)).one()._mapping)


def run_burst(settings, redis_conn, worker_class=PartneroWorker):
    worker = build_worker(Services.build(settings, redis_conn), worker_class=worker_class)
    worker.work(burst=True)
    return worker


@pytest.mark.usefixtures("whole_drains")
def test_a_stored_delivery_is_processed_and_recorded(settings, redis_conn):
    [event_id] = store(settings, sample_delivery("partner.created"), enqueue_to=redis_conn)
    run_burst(settings, redis_conn)
    processed = row(settings, event_id)
    assert processed["status"] == "processed"
    assert processed["attempts"] == 1
    assert processed["last_error"] is None
    assert processed["processed_at"] is not None
    [job] = drain_jobs(redis_conn)
    assert job.get_status() == JobStatus.FINISHED
    # The dashboard says what the wake-up turned out to do: which deliveries, never their text.
    assert job.description == f"partner.created (inbox #{event_id})"
    assert job.return_value() == "1 processed, 0 ignored, 0 failed"


def test_the_paas_worker_processes_deliveries(settings, redis_conn):
    ids = store(
        settings,
        *(sample_delivery("customer.created", key=f"acct_{i}") for i in range(5)),
        enqueue_to=redis_conn,
    )
    run_burst(settings, redis_conn, worker_class=PartneroWorker)
    assert [row(settings, i)["status"] for i in ids] == ["processed"] * 5


def test_running_a_job_twice_changes_nothing(settings, redis_conn):
    [event_id] = store(settings, sample_delivery("partner.updated"))
    services = Services.build(settings, redis_conn)
    build_worker(services)  # migrates, as the worker does at its start
    assert jobs.process_events(services, [event_id]) == "1 processed, 0 ignored, 0 failed"
    first = row(settings, event_id)
    assert jobs.process_events(services, [event_id]) == "0 processed, 0 ignored, 0 failed"
    second = row(settings, event_id)
    assert second["status"] == "processed" and second["processed_at"] == first["processed_at"]


@pytest.mark.usefixtures("whole_drains")
def test_database_down_means_retry_later_with_backoff(settings, redis_conn, caplog):
    [event_id] = store(settings, sample_delivery("partner.created"), enqueue_to=redis_conn)
    down = settings.with_overrides(database_url=DEAD_PG_URL)
    before = datetime.now(timezone.utc).replace(microsecond=0)  # RQ keeps whole seconds
    with caplog.at_level(logging.WARNING, logger="sync.worker.jobs"):
        run_burst(down, redis_conn)

    queue = Queue(QUEUE_NAME, connection=redis_conn)
    [job] = drain_jobs(redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.number_of_retries == 1
    due = queue.scheduled_job_registry.get_scheduled_time(job)
    first_delay = backoff.DELIVERY_DELAYS[0]
    assert before + timedelta(seconds=first_delay) <= due
    assert due <= datetime.now(timezone.utc) + timedelta(seconds=first_delay * 1.2 + 1)
    # RQ does not record why a job asked for a retry; our log line does.
    assert any("database unavailable" in r.getMessage() and "retry 1 of" in r.getMessage() for r in caplog.records)
    assert row(settings, event_id)["status"] == "pending"

    # The database is back and the retry falls due: processed.
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)
    run_burst(settings, redis_conn)
    assert row(settings, event_id)["status"] == "processed"


@pytest.mark.usefixtures("whole_drains")
def test_a_passing_failure_is_noted_on_the_row_and_never_fails_it_even_after_the_last_retry(
    settings, redis_conn, monkeypatch
):
    def sink_unavailable(_delivery):
        raise TransientError("sink unavailable: connection reset")

    monkeypatch.setattr(Processor, "process_batch", lambda self, events: sink_unavailable(events))
    [event_id] = store(settings, sample_delivery("partner.created"), enqueue_to=redis_conn)
    run_burst(settings, redis_conn)
    retrying = row(settings, event_id)
    assert retrying["status"] == "pending"
    assert retrying["last_error"] == "sink unavailable: connection reset"

    [job] = drain_jobs(redis_conn)
    job.number_of_retries = len(backoff.DELIVERY_DELAYS)
    job.save()
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)
    run_burst(settings, redis_conn)

    # The job gives up (and shows in RQ's failed registry); the delivery does not.
    assert job.get_status(refresh=True) == JobStatus.FAILED
    still = row(settings, event_id)
    assert still["status"] == "pending" and still["last_error"] == "sink unavailable: connection reset"
    # The cause passes: the sweeper brings it back and it is processed.
    monkeypatch.undo()
    with db.engine_for(settings.database_url).begin() as conn:
        an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        conn.execute(webhook_events.update().values(received_at=an_hour_ago))
    redis_conn.flushdb()  # its job is gone (expired): only the inbox knows
    run_burst(settings, redis_conn)
    assert row(settings, event_id)["status"] == "processed"


@pytest.mark.usefixtures("whole_drains")
def test_a_delivery_that_cannot_be_applied_fails_once_with_its_reason_and_alone(settings, redis_conn, caplog):
    bad, good = store(settings, {"event": "partner.created", "data": "not an object"},
                      sample_delivery("partner.created"), enqueue_to=redis_conn)
    with caplog.at_level(logging.ERROR, logger="sync.worker.jobs"):
        run_burst(settings, redis_conn)

    queue = Queue(QUEUE_NAME, connection=redis_conn)
    # The job did its work: each delivery's outcome is on its row, not in RQ's failed registry.
    assert queue.failed_job_registry.get_job_ids() == []
    assert [j.get_status() for j in drain_jobs(redis_conn)] == [JobStatus.FINISHED]
    assert queue.scheduled_job_registry.get_job_ids() == []
    failed = row(settings, bad)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["last_error"] == 'delivery has no "data" object'
    assert row(settings, good)["status"] == "processed"
    lines = [r for r in caplog.records if 'delivery has no "data" object' in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback


def test_a_drain_past_its_slice_hands_over_to_a_fresh_wake_up_and_applies_each_delivery_once(
    settings, redis_conn, monkeypatch
):
    monkeypatch.setattr(jobs, "CLAIM_BATCH", 3)
    monkeypatch.setattr(jobs, "SLICE_SECONDS", 0)  # every slice is over after its first batch
    ids = store(settings, *(sample_delivery("partner.created", id=f"ptn_{i}") for i in range(7)),
                enqueue_to=redis_conn)
    run_burst(settings, redis_conn)

    # Each drain stops after one batch. A full batch has already woken the next; after the last,
    # the handover's own wake-up finds nothing left.
    drains = drain_jobs(redis_conn)
    assert {j.get_status() for j in drains} == {JobStatus.FINISHED}
    assert [j.return_value().split(",")[0] for j in drains] == ["3 processed", "3 processed", "1 processed",
                                                                 "0 processed"]
    assert drains[-1].description == "wake-up: nothing was pending"
    assert [(row(settings, i)["status"], row(settings, i)["attempts"]) for i in ids] == [("processed", 1)] * len(ids)


def test_an_unexpected_error_while_applying_fails_that_delivery_alone(settings, redis_conn, monkeypatch):
    from sync.store import ledger

    real_settle_many = ledger.settle_many

    def broken(conn, settlements, now, **program):
        if any(s.transaction_key == "tx_boom" for s in settlements):
            raise KeyError("a bug tripped by this delivery")
        return real_settle_many(conn, settlements, now, **program)

    monkeypatch.setattr(ledger, "settle_many", broken)
    boom, fine = store(settings, sample_delivery("transaction.created", key="tx_boom"),
                       sample_delivery("transaction.created", key="tx_fine"), enqueue_to=redis_conn)
    run_burst(settings, redis_conn)
    failed = row(settings, boom)
    assert failed["status"] == "failed"
    assert failed["last_error"].startswith("could not be applied: KeyError")
    assert "a bug tripped" not in failed["last_error"]  # an exception's text may hold values
    assert row(settings, fine)["status"] == "processed"
    assert Queue(QUEUE_NAME, connection=redis_conn).failed_job_registry.count == 0


def test_many_attempts_never_fail_a_delivery(settings, redis_conn):
    """A worker killed mid-job again and again (deploys, say) is no reason to give a delivery up."""
    [event_id] = store(settings, sample_delivery("partner.created"), enqueue_to=redis_conn)
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(webhook_events.update().values(attempts=1000))
    run_burst(settings, redis_conn)
    assert row(settings, event_id)["status"] == "processed"


def test_the_worker_sweeps_lost_deliveries_and_processes_them(settings, redis_conn):
    # Stored while Redis was down: no worker was woken for them.
    lost, fresh = store(settings, sample_delivery("partner.created"), sample_delivery("partner.updated"))
    with db.engine_for(settings.database_url).begin() as conn:
        an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        conn.execute(webhook_events.update().where(webhook_events.c.id == lost).values(received_at=an_hour_ago))
    run_burst(settings, redis_conn)
    # The sweep wakes a worker for the one that waited; woken, it claims every pending delivery.
    assert row(settings, lost)["status"] == "processed"
    assert row(settings, fresh)["status"] == "processed"


def test_a_worker_killed_holding_rows_lets_go_of_them_when_its_claim_lapses(settings, redis_conn):
    from sync.store.inbox import CLAIM_LEASE, Inbox

    ids = store(settings, *(sample_delivery("partner.created", id=f"ptn_{i}") for i in range(3)))
    inbox = Inbox(db.engine_for(settings.database_url))
    assert [e.id for e in inbox.claim()] == sorted(ids)  # a worker claimed them, then died
    assert inbox.claim() == []  # nobody else takes rows that are held
    with db.engine_for(settings.database_url).begin() as conn:  # time passes: the claim lapses
        conn.execute(webhook_events.update().values(
            claimed_until=datetime.now(timezone.utc) - timedelta(seconds=1),
            received_at=datetime.now(timezone.utc) - CLAIM_LEASE))
    run_burst(settings, redis_conn)  # the sweep wakes a worker, which claims them again
    assert [row(settings, i)["status"] for i in ids] == ["processed"] * 3
    assert {row(settings, i)["attempts"] for i in ids} == {2}


def test_a_row_claimed_twice_without_an_outcome_is_claimed_alone(settings):
    from sync.store.inbox import ALONE_AFTER, Inbox

    ids = sorted(store(settings, *(sample_delivery("partner.created", id=f"ptn_{i}") for i in range(4))))
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(webhook_events.update().where(webhook_events.c.id == ids[1]).values(attempts=ALONE_AFTER))
    inbox = Inbox(db.engine_for(settings.database_url))
    assert [e.id for e in inbox.claim()] == ids[:1]  # up to the suspect, not with it
    assert [e.id for e in inbox.claim()] == ids[1:2]  # the suspect, alone
    assert [e.id for e in inbox.claim()] == ids[2:]


def test_two_workers_share_a_backlog_without_claiming_a_row_twice(pg_url, redis_server_url):
    import threading

    from sync.store.inbox import Inbox
    from tests.conftest import empty_tables

    empty_tables(pg_url)
    settings = Settings(webhook_secrets=("s",), database_url=pg_url, redis_url=redis_server_url, mappings_dir=MAPPINGS)
    store(settings, *(sample_delivery("partner.created", id=f"ptn_{i}") for i in range(1000)))
    claimed: list[list[int]] = [[], []]

    def claim(into: list[int]) -> None:
        inbox = Inbox(db.make_engine(pg_url))
        while batch := inbox.claim(37):
            into += [e.id for e in batch]

    threads = [threading.Thread(target=claim, args=(claimed[i],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert claimed[0] and claimed[1]  # both took a share
    assert sorted(claimed[0] + claimed[1]) == sorted(set(claimed[0] + claimed[1]))  # none twice
    assert len(claimed[0]) + len(claimed[1]) == 1000


@pytest.mark.parametrize("retries, low, high", [(0, 10, 12), (3, 300, 360), (20, 3600, 4320)])
def test_backoff_grows_with_jitter(retries, low, high):
    delays = {backoff.delay(backoff.DELIVERY_DELAYS, retries) for _ in range(200)}
    assert min(delays) >= low and max(delays) <= high
    assert len(delays) > 1
