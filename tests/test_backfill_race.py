"""Two backfills of the same lists started at the same moment: exactly one gets the run, the other
is refused, on SQLite, PostgreSQL and MariaDB.

Each backfill runs in its own thread with its own database engine (its own connections, as two
processes have). Both are held at a barrier after they looked for a run and before they write,
so both have seen the same state, the moment a check-then-act lets both through.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import sqlalchemy as sa

from sync.partnero.api import PartneroApi
from sync.partnero.backfill import AlreadyRunning, Backfill
from sync.store.runs import Run, RunStatus, Runs
from sync.store.sqltypes import UTCDateTime
from tests.partnero_helpers import make_services

SINCE = datetime(2026, 3, 1, tzinfo=timezone.utc)


def race(url: str, redis_url: str, partnero, **options) -> list:
    """Prepare two backfills at once, released together after their look at the runs; what each
    got: its Run, or the AlreadyRunning it raised."""
    barrier = threading.Barrier(2, timeout=30)
    outcomes: list = [None, None]
    fillers = []
    for _ in range(2):
        services = make_services(url, redis_url, partnero)
        filler = Backfill(services, PartneroApi(services.settings.partnero))
        looked = filler.runs.unfinished

        def unfinished(*args, _looked=looked, **kwargs):
            found = _looked(*args, **kwargs)
            if not getattr(threading.current_thread(), "passed", False):
                threading.current_thread().passed = True  # only the first look waits for the other
                barrier.wait()
            return found

        filler.runs.unfinished = unfinished
        fillers.append(filler)

    def start(n: int) -> None:
        try:
            outcomes[n] = fillers[n].prepare(since=SINCE, **options)
        except Exception as exc:  # noqa: BLE001 - the outcome is checked, whatever it is
            outcomes[n] = exc

    threads = [threading.Thread(target=start, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def won_and_refused(outcomes: list):
    runs = [o for o in outcomes if isinstance(o, Run)]
    refused = [o for o in outcomes if isinstance(o, AlreadyRunning)]
    assert (len(runs), len(refused)) == (1, 1), outcomes
    assert f"backfill #{runs[0].id} is running" in str(refused[0])
    return runs[0]


def test_two_backfills_started_at_once_start_one_run(program, warehouse_url, redis_conn, redis_server_url):
    winner = won_and_refused(race(warehouse_url, redis_server_url, program))
    runs = Runs(make_services(warehouse_url, redis_server_url, program).inbox.engine)
    assert winner.status == RunStatus.RUNNING and runs.latest().id == winner.id  # no second run was made


def test_two_backfills_resuming_the_same_stopped_run_at_once_take_it_up_once(
        program, warehouse_url, redis_conn, redis_server_url):
    runs = Runs(make_services(warehouse_url, redis_server_url, program).inbox.engine)
    stopped = runs.start(("partners", "customers", "transactions"), SINCE)
    runs.advance(stopped.id, "customers", 2, None, records=9)
    runs.finish(stopped.id, RunStatus.STOPPED)
    winner = won_and_refused(race(warehouse_url, redis_server_url, program))
    assert (winner.id, winner.status, winner.entity, winner.next_page) == (stopped.id, RunStatus.RUNNING, "customers", 2)
    assert runs.latest().id == stopped.id


def test_two_restarts_at_once_abandon_the_old_run_and_start_one(program, warehouse_url, redis_conn,
                                                                redis_server_url):
    runs = Runs(make_services(warehouse_url, redis_server_url, program).inbox.engine)
    old = runs.start(("partners", "customers", "transactions"), SINCE)
    runs.finish(old.id, RunStatus.STOPPED)
    winner = won_and_refused(race(warehouse_url, redis_server_url, program, restart=True))
    assert winner.id != old.id and winner.next_page == 1
    assert runs.get(old.id).status == RunStatus.ABANDONED
    assert runs.latest().id == winner.id


def test_a_run_that_is_over_frees_its_lists_for_the_next(database_url):
    from sync.store import db

    runs = Runs(db.engine_for(database_url))
    first = runs.start(("partners",), None)
    assert runs.start(("partners",), None) is None  # the same lists, unfinished: no second
    assert runs.start(("partners",), SINCE) is not None  # another --since is another backfill
    assert runs.start(("customers",), None) is not None
    runs.finish(first.id)
    again = runs.start(("partners",), None)
    assert again is not None and runs.unfinished(("partners",), None).id == again.id


def test_the_migration_keeps_one_unfinished_run_per_backfill(warehouse_url):
    """Runs left by the old check-then-act: of two unfinished runs of the same lists, the newest
    (the one a backfill resumes) keeps its lists; the other is abandoned, saying why."""
    from alembic import command

    from sync.store import db, schema

    engine = db.engine_for(warehouse_url)
    with engine.connect() as conn:
        command.downgrade(schema._config(conn), "0008")  # the revision before the lock's
        conn.commit()
    now = datetime.now(timezone.utc)
    runs = sa.table("backfill_runs", *(sa.column(c) for c in ("entities", "status", "entity", "next_page")),
                    sa.column("since", UTCDateTime()), sa.column("started_at", UTCDateTime()),
                    sa.column("heartbeat_at", UTCDateTime()))
    rows = [("partners,customers", None, RunStatus.STOPPED), ("partners,customers", None, RunStatus.STOPPED),
            ("partners,customers", SINCE, RunStatus.STOPPED), ("partners", None, RunStatus.FINISHED), ("partners", None, RunStatus.RUNNING)]
    with engine.begin() as conn:
        conn.execute(runs.insert(), [{"entities": e, "since": s, "status": st, "entity": e.split(",")[0],
                                      "next_page": 2, "started_at": now, "heartbeat_at": now} for e, s, st in rows])
        ids = sorted(conn.execute(sa.text("SELECT id FROM backfill_runs")).scalars())
    schema.migrate(engine)
    found = Runs(engine)
    assert [found.get(n).status for n in ids] == [RunStatus.ABANDONED, RunStatus.STOPPED, RunStatus.STOPPED, RunStatus.FINISHED, RunStatus.RUNNING]
    assert "migration" in found.get(ids[0]).last_error
    assert found.unfinished(("partners", "customers"), None).id == ids[1]
    assert found.unfinished(("partners", "customers"), SINCE).id == ids[2]
    assert found.unfinished(("partners",), None).id == ids[4]
    assert found.start(("partners", "customers"), None) is None
