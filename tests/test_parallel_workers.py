"""Several worker processes on one PostgreSQL database, racing on the same records, converge."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rq import Queue

from sync.worker.queues import QUEUE_NAME, JobQueue
from tests.conftest import MAPPINGS, empty_tables, migrate
from tests.warehouse_helpers import Pipe, envelope

BIN = Path(sys.executable).parent
BASE = datetime(2026, 3, 1, tzinfo=timezone.utc)


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def contended_history(rng: random.Random) -> list[dict]:
    """Few records, many deliveries each: the workers keep landing on the same rows."""
    history = []
    for p in range(3):
        for step in range(6):
            history.append(envelope("partner.updated", stamp(step), id=f"ptn_{p}", name=f"v{step}",
                                    email=f"P{p}@x.io", status="active", updated_at=stamp(step)))
        if p == 0:
            history.append(envelope("partner.deleted", stamp(50), id="ptn_0"))
    for t in range(6):
        rewards = [{"partner": f"ptn_{(t + i) % 3}", "amount": round(rng.uniform(1, 500), 3),
                    "amount_units": "EUR", "status": rng.choice(["ok", "review_period"])} for i in range(2)]
        data = {"key": f"txn_{t}", "amount": round(rng.uniform(10, 5000), 2), "amount_units": "EUR",
                "partner": "ptn_0", "customer": "c", "action": "sale", "rewards": rewards}
        for retry in range(3):  # Partnero's retries: same data, sent later
            history.append(envelope("transaction.created", stamp(10 + retry), **data))
        if t % 2 == 0:
            for retry in range(2):
                history.append(envelope("transaction.deleted", stamp(30 + retry), key=f"txn_{t}"))
    return history


def test_parallel_workers_converge_on_postgres(pg_url, redis_server_url, redis_conn, tmp_path):
    history = contended_history(random.Random(7))

    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    migrate(reference_url)
    reference = Pipe(reference_url)
    reference.deliver(*history)
    expected = reference.snapshot()

    empty_tables(pg_url)
    pipe = Pipe(pg_url)
    shuffled = history[:]
    random.Random(11).shuffle(shuffled)
    events = [pipe.store(json.dumps(d).encode()) for d in shuffled]
    jobs = JobQueue(redis_conn)
    for start in range(0, len(events), 5):  # small jobs, so that the four workers overlap
        jobs.enqueue_rows([e.id for e in events[start:start + 5]])

    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_server_url,
        "MAPPINGS_DIR": str(MAPPINGS),
        "PATH": f"{BIN}:/usr/bin:/bin",
        "LOG_LEVEL": "WARNING",
    }
    workers = [
        subprocess.Popen([str(BIN / "partnero-sync"), "worker", "--burst"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs

    queue = Queue(QUEUE_NAME, connection=redis_conn)
    assert queue.failed_job_registry.count == 0, outputs
    assert queue.scheduled_job_registry.count == 0, outputs  # nothing had to wait for a retry
    assert pipe.snapshot() == expected
    assert pipe.inbox.summary().counts["processed"] == len(events)
