"""A worker killed outright (SIGKILL, as the OOM killer or a PaaS's hard stop does it): RQ's
scheduler, which runs in a child of the worker, dies with it, and `status` counts it out at once
instead of showing it, and the job it held, for minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.test_processes import BIN, ROOT, environment, start, wait_for


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def status(env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run([str(BIN / "partnero-sync"), "status", "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


def slow_job(seconds: float) -> str:
    """A job the worker is in the middle of when it is killed."""
    time.sleep(seconds)
    return "done"


def test_a_killed_worker_leaves_no_scheduler_and_status_counts_it_out_at_once(redis_server_url, redis_conn,
                                                                             tmp_path):
    from rq import Queue

    from sync.worker.queues import QUEUE_NAME

    env = environment(REDIS_URL=redis_server_url, DATABASE_URL=f"sqlite:///{tmp_path}/w.db",
                      PYTHONPATH=str(ROOT))
    assert subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, cwd=tmp_path,
                          capture_output=True).returncode == 0
    worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
    scheduler = None
    try:
        scheduler = wait_for(lambda: children(worker.pid), what="the worker's scheduler to start")[0]
        Queue(QUEUE_NAME, connection=redis_conn).enqueue(slow_job, 120)
        wait_for(lambda: status(env, tmp_path)["queue"]["started"] == 1, what="the job to start")
        assert status(env, tmp_path)["queue"]["workers"] == 1

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: not running(scheduler), timeout=10, what="the scheduler to die with its worker")
        counts = wait_for(lambda: (q := status(env, tmp_path)["queue"])["workers"] == 0 and q, timeout=15,
                          what="status to count the killed worker out")
        assert counts["started"] == 0  # the job it held is not "running" either
        assert time.monotonic() - killed < 15
    finally:
        for pid in [worker.pid, *children(worker.pid), *([scheduler] if scheduler else [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.communicate()
