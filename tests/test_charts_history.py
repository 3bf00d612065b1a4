"""The charts' history: ops_history on SQLite, PostgreSQL and MariaDB (idempotent, bounded, by
program), and the sampler writing real snapshots of crafted inbox and outbox rows, minute by
minute on an injected clock, with the metrics' counters in real Redis."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from sync.ops import metrics
from sync.ops.charts import WINDOWS
from sync.ops.history import History
from sync.ops.snapshot import take
from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.settings import Program
from sync.store import db
from sync.store.history import KEEP, HistoryStore, Sample, ops_history
from sync.store.inbox import Delivery, DeliveryStatus
from sync.store.outbox import OutboxStatus, crm_outbox
from tests.conftest import SECRETS
from tests.test_salesforce_sync import password_login

T0 = datetime(2026, 3, 14, 10, 0, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)


# -- the table ---------------------------------------------------------------------------------


def test_a_minute_written_twice_is_one_row_with_the_last_values(warehouse_url):
    store = HistoryStore(db.engine_for(warehouse_url))
    store.write([Sample("default", T0, received=3, received_total=10, oldest_pending_age=5)])
    store.write([Sample("default", T0, received=4, received_total=11, oldest_pending_age=7),
                 Sample("friends", T0, received=1)])
    assert store.count() == 2
    assert store.read("default", T0, T0) == [Sample("default", T0, received=4, received_total=11,
                                                     oldest_pending_age=7)]
    assert store.at(T0)["friends"] == Sample("friends", T0, received=1)
    assert store.at(T0 - MINUTE) == {}


def test_samples_older_than_25_hours_go_as_new_ones_are_written(warehouse_url):
    store = HistoryStore(db.engine_for(warehouse_url))
    # 26 hours of two programs' minutes, written an hour at a time.
    for hour in range(26):
        store.write([Sample(program, T0 + (hour * 60 + m) * MINUTE, received=m)
                     for m in range(60) for program in ("default", "friends")])
    newest = T0 + (26 * 60 - 1) * MINUTE
    assert store.count() == 2 * (int(KEEP / MINUTE) + 1)  # 1,501 a program
    kept = store.read(None, T0, newest)
    assert kept[0].at == newest - KEEP and kept[-1].at == newest
    assert {s.program for s in kept} == {"default", "friends"}
    assert [s.program for s in store.read("friends", T0, newest)] == ["friends"] * (int(KEEP / MINUTE) + 1)
    assert store.read("nobody", T0, newest) == []


# -- the sampler --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def services(settings, fake, redis_conn, clock) -> Services:
    """Two programs, Salesforce on (nothing here calls it), the clock in the test's hands."""
    programs = (Program("default", SECRETS, mappings_dir=settings.mappings_dir, named=True),
                Program("friends", ("whsec_friends",), mappings_dir=settings.mappings_dir, named=True))
    settings = settings.with_overrides(salesforce=password_login(fake), program_list=programs)
    return Services.build(settings, redis_conn, clock=clock)


def deliveries(services, program: str, *events: str) -> list[int]:
    """Store a pending delivery of each event, received now."""
    documents = [sample_delivery(event, id=f"{program}_{i}") for i, event in enumerate(events)]
    stored = services.inbox.store_many([Delivery(json.dumps(d).encode(), d["event"], DeliveryStatus.PENDING,
                                                 program=program) for d in documents])
    return sorted(s.id for s in stored.values())


def outbox_row(services, program: str, external_id: str, status: str, waiting_since: datetime | None) -> None:
    with db.transaction(services.inbox.engine) as conn:
        conn.execute(crm_outbox.insert().values(
            object="Contact", external_id=external_id, entity="partner", entity_id=external_id, program=program,
            status=status, sync_version=T0, waiting_since=waiting_since))


def counted(program: str, received: int = 0, processed: int = 0, failed: int = 0) -> None:
    """What the receiver and the workers count (the sampler reads it back from Redis)."""
    metrics.RECEIVED.inc(received, program=program, outcome="queued")
    metrics.RECEIVED.inc(99, program=program, outcome="duplicate")  # a retry: not a delivery received
    metrics.ATTEMPTS.inc(processed, program=program, outcome=DeliveryStatus.PROCESSED)
    metrics.ATTEMPTS.inc(failed, program=program, outcome=DeliveryStatus.FAILED)
    metrics.ATTEMPTS.inc(7, program=program, outcome="retried")  # tried again later: no outcome yet


def rows(services) -> dict[tuple[str, datetime], dict]:
    with services.inbox.engine.connect() as conn:
        return {(r.program, r.at): dict(r._mapping) for r in conn.execute(sa.select(ops_history))}


def figures(row: dict, *names: str) -> tuple:
    return tuple(row[name] for name in names)


COUNTS = ("received", "processed", "failed")
GAUGES = ("oldest_pending_age", "crm_backlog", "crm_lag", "crm_refused")


def test_a_minute_is_sampled_from_a_snapshot_of_the_real_rows(services, clock, redis_conn):
    history = History(services.inbox.engine, clock, redis_conn)
    deliveries(services, "default", "partner.created", "customer.created")
    clock.now = T0 + timedelta(seconds=40)
    deliveries(services, "friends", "partner.created")
    outbox_row(services, "default", "p1", OutboxStatus.PENDING, T0 - timedelta(minutes=5))
    outbox_row(services, "default", "p2", OutboxStatus.WAITING, T0 - timedelta(minutes=2))
    outbox_row(services, "default", "p3", OutboxStatus.FAILED, T0 - timedelta(hours=3))  # refused: not waiting
    outbox_row(services, "friends", "f1", OutboxStatus.SYNCED, None)
    counted("default", received=2)
    counted("friends", received=1)

    clock.now = T0 + timedelta(seconds=50)
    history(take(services))  # as the Monitor calls it: with its snapshot
    found = rows(services)
    assert set(found) == {("default", T0), ("friends", T0)}
    default, friends = found["default", T0], found["friends", T0]
    # The first minute has no minute before it: its counts are not known, its counters are kept.
    assert figures(default, *COUNTS) == (None, None, None)
    assert figures(default, "received_total", "processed_total", "failed_total") == (2, 0, 0)
    assert figures(default, *GAUGES) == (50, 2, 5 * 60 + 50, 1)
    assert figures(friends, *GAUGES) == (10, 0, 0, 0)  # nothing waits: no lag

    clock.now = T0 + MINUTE + timedelta(seconds=5)
    counted("default", received=3, processed=2)
    counted("friends", failed=1)
    history.record(take(services))
    default, friends = rows(services)["default", T0 + MINUTE], rows(services)["friends", T0 + MINUTE]
    assert figures(default, *COUNTS) == (3, 2, 0) and figures(friends, *COUNTS) == (0, 0, 1)
    assert figures(default, "oldest_pending_age", "crm_lag") == (65, 6 * 60 + 5)


def test_minutes_written_twice_missed_or_after_redis_was_emptied_never_double_or_spike(services, clock, redis_conn):
    history = History(services.inbox.engine, clock, redis_conn)
    deliveries(services, "default", "partner.created")

    def minute(m: int, seconds: int = 10, **counts) -> None:
        counted("default", **counts)
        clock.now = T0 + m * MINUTE + timedelta(seconds=seconds)
        history.record(take(services))

    minute(0, received=5)
    minute(1, received=2)
    minute(1, seconds=50, received=4)  # the same minute again: replaced, 6 in all, not 2 + 6
    minute(2, received=1)
    minute(4, received=8)  # minute 3 missed: minute 4's 8 + minute 3's are not one minute's
    minute(5, received=1)
    redis_conn.delete(metrics.RECEIVED.key, metrics.ATTEMPTS.key)  # Redis emptied: counters from 0
    minute(6, received=2)
    minute(7, received=3)

    found = rows(services)
    by_minute = {(at - T0) // MINUTE: row["received"] for (program, at), row in found.items() if program == "default"}
    assert by_minute == {0: None, 1: 6, 2: 1, 4: None, 5: 1, 6: None, 7: 3}
    assert len(found) == 2 * 7  # friends too, with nothing counted
    assert all(row["received"] in (None, 0) for (program, _), row in found.items() if program == "friends")

    series = history.series("default", WINDOWS["1h"])
    assert [p.received for p in series.points[-8:]] == [None, 6, 1, None, None, 1, None, 3]
    assert series.points[-1].at == T0 + 7 * MINUTE


def test_the_series_adds_programs_up_or_shows_one(services, clock, redis_conn):
    history = History(services.inbox.engine, clock, redis_conn)
    for m, (default, friends) in enumerate([(0, 0), (2, 5), (1, 1)]):
        counted("default", received=default, processed=default)
        counted("friends", received=friends)
        clock.now = T0 + m * MINUTE + timedelta(seconds=30)
        if m == 1:
            deliveries(services, "friends", "partner.created")
        history.record(take(services))

    every = history.series(None, WINDOWS["1h"])
    assert every.end == T0 + 3 * MINUTE and every.start == every.end - timedelta(hours=1)
    assert [(p.received, p.processed) for p in every.points[-3:]] == [(None, None), (7, 2), (2, 1)]
    # Ages: the oldest of any program (nothing pending: 0, not a gap); backlogs added up.
    assert [p.oldest_pending_age for p in every.points[-4:]] == [None, 0, 0, 60]
    assert every.points[-1].crm_backlog == 0
    friends = history.series("friends", WINDOWS["1h"])
    assert [p.received for p in friends.points[-3:]] == [None, 5, 1]
    day = history.series(None, WINDOWS["24h"])
    assert len(day.points) == 288 and day.points[-1].received == 4.5  # one step of 5 minutes: (7 + 2) / 2
    assert history.series("nobody", WINDOWS["1h"]).empty


def test_without_redis_the_gauges_are_sampled_and_without_the_database_nothing(services, clock):
    history = History(services.inbox.engine, clock, connection=None)
    deliveries(services, "default", "partner.created")
    clock.now = T0 + timedelta(seconds=30)
    snapshot = take(services)
    history.record(snapshot)
    default = rows(services)["default", T0]
    assert figures(default, *COUNTS) == (None, None, None) and default["oldest_pending_age"] == 30

    clock.now = T0 + MINUTE
    snapshot = take(services)
    snapshot.unavailable["database"] = "the database did not answer"
    history.record(snapshot)
    assert set(rows(services)) == {("default", T0), ("friends", T0)}
