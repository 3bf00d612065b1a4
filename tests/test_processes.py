"""End to end: the Procfile's processes and `partnero-sync dev`, as real processes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync.partnero.samples import sample_delivery
from sync.store import db
from sync.store.inbox import webhook_events
from tests.conftest import DEAD_REDIS_URL, SECRETS, signed

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTNERO_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MAPPINGS_DIR"] = str(ROOT / "mappings")
    env.update(extra)
    return env


def service_environment(pg_url: str, redis_url: str, port: int, **extra: str) -> dict[str, str]:
    """The variables of the Procfile's processes on the test databases: PostgreSQL named as a PaaS
    names it (``postgres://``), two web processes on ``port``."""
    return environment(
        DATABASE_URL=pg_url.replace("postgresql+psycopg", "postgres"),
        REDIS_URL=redis_url,
        PARTNERO_WEBHOOK_SECRET=",".join(SECRETS),
        PORT=str(port),
        WEB_CONCURRENCY="2",
        **extra,
    )


def start(command: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
    # The Procfile's lines are shell lines ($PORT); run them the way a PaaS does.
    return subprocess.Popen(
        ["/bin/sh", "-c", f"exec {command}"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so nothing it starts outlives the test
    )


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def statuses(database_url: str) -> list[str]:
    with db.engine_for(database_url).connect() as conn:
        return [s for (s,) in conn.execute(sa.select(webhook_events.c.status).order_by(webhook_events.c.id))]


def stop(process: subprocess.Popen, timeout: float = 30) -> str:
    """SIGTERM, as a PaaS does; returns the output. The process must exit by itself, cleanly."""
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"did not stop on SIGTERM:\n{output.decode('utf-8', 'replace')}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind
        except ProcessLookupError:
            pass
    return output.decode("utf-8", "replace")


def test_the_procfile_runs_the_service(pg_url, redis_server_url, redis_conn, tmp_path):
    with db.engine_for(pg_url).begin() as conn:
        for table in sa.inspect(conn).get_table_names():  # release must create them all
            conn.execute(sa.text(f"DROP TABLE {table} CASCADE"))
    port = free_port()
    env = service_environment(pg_url, redis_server_url, port)
    processes = procfile()
    assert set(processes) == {"web", "worker", "release"}
    for _ in range(2):  # release is safe to run again
        release = subprocess.run(
            ["/bin/sh", "-c", processes["release"]], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert release.returncode == 0, release.stdout + release.stderr

    web = start(processes["web"], env, cwd=tmp_path)
    worker = start(processes["worker"], env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")
        deliveries = [sample_delivery("partner.created", id=f"ptn_{i}") for i in range(10)]
        deliveries.append({"event": "reward.paid", "data": {"key": "rw_1"}})
        answers = []
        for document in deliveries + deliveries[:3]:  # three retries of the same bytes
            body, headers = signed(document)
            answers.append(post(f"{base}/webhooks/partnero", body, headers))
        assert [status for status, _ in answers] == [202] * 14
        assert [a["status"] for _, a in answers] == ["queued"] * 10 + ["ignored"] + ["duplicate"] * 3
        wait_for(
            lambda: statuses(pg_url) == ["processed"] * 10 + ["ignored"],
            what="the worker to process every delivery",
        )
    finally:
        web_output = stop(web)
        worker_output = stop(worker)
    assert web.returncode == 0, web_output
    assert worker.returncode == 0, worker_output
    # Payload text never reaches the logs at INFO.
    for output in (web_output, worker_output):
        assert "maria@techreviews.io" not in output and SECRETS[0] not in output


def test_honcho_runs_the_procfiles_web_and_worker_as_the_readme_says(redis_server_url, redis_conn, tmp_path):
    assert "`honcho start web worker`" in (ROOT / "README.md").read_text()
    port = free_port()
    database_url = f"sqlite:///{tmp_path}/honcho.db"
    env = environment(DATABASE_URL=database_url, REDIS_URL=redis_server_url,
                      PARTNERO_WEBHOOK_SECRET=SECRETS[0])
    assert subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, cwd=tmp_path).returncode == 0
    honcho = start(f"{BIN}/honcho --no-colour start -f {ROOT}/Procfile -d {tmp_path} -p {port} web worker",
                   env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="honcho's web process")
        assert post(f"{base}/webhooks/partnero", *signed(sample_delivery("partner.created")))[0] == 202
        wait_for(lambda: statuses(database_url) == ["processed"], what="honcho's worker")
    finally:
        output = stop(honcho)
    assert "web.1" in output and "worker.1" in output and "release" not in output


def test_the_web_process_refuses_to_start_without_a_secret(tmp_path):
    port = free_port()
    env = environment(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    web = start(procfile()["web"], env, cwd=tmp_path)
    output, _ = web.communicate(timeout=60)
    assert web.returncode != 0
    assert "PARTNERO_WEBHOOK_SECRET is not set" in output.decode()


@pytest.mark.parametrize("redis_mode", ["real", "stand-in"])
def test_dev_runs_the_whole_service_on_defaults(tmp_path, redis_server_url, redis_conn, redis_mode):
    port = free_port()
    env = environment(REDIS_URL=redis_server_url if redis_mode == "real" else DEAD_REDIS_URL)
    dev = start(f"{BIN}/partnero-sync dev --port {port}", env, cwd=tmp_path)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="dev to serve")
        send = subprocess.run(
            [str(BIN / "partnero-sync"), "send-test", "--url", f"http://127.0.0.1:{port}/webhooks/partnero"],
            env={**env, "PARTNERO_WEBHOOK_SECRET": "partnero-dev-secret"},
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert send.returncode == 0, send.stdout + send.stderr
        assert send.stdout.startswith("202 ")
        database_url = f"sqlite:///{tmp_path}/partnero-sync.db"  # the embedded default
        wait_for(lambda: statuses(database_url) == ["processed"], what="the delivery to be processed")
    finally:
        output = stop(dev)
    assert "partnero-dev-secret" in output  # it says which secret it uses
    assert ("in-process stand-in" in output) == (redis_mode == "stand-in")
    assert "send-test" in output and "curl" in output  # how to send a signed delivery
    assert shlex.quote("partnero-dev-secret") in output


def slow_job(path: str, seconds: float) -> str:
    """A job for the test below: takes its time, then leaves a mark."""
    time.sleep(seconds)
    Path(path).write_text("done")
    return "done"


def test_sigterm_lets_the_job_in_hand_finish(redis_server_url, redis_conn, tmp_path):
    from rq import Queue
    from rq.job import JobStatus

    from sync.worker.queues import QUEUE_NAME

    env = environment(REDIS_URL=redis_server_url, DATABASE_URL=f"sqlite:///{tmp_path}/w.db",
                      PYTHONPATH=str(ROOT))
    mark = tmp_path / "mark"
    job = Queue(QUEUE_NAME, connection=redis_conn).enqueue(slow_job, str(mark), 3)
    worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
    try:
        wait_for(lambda: job.get_status(refresh=True) == JobStatus.STARTED, what="the job to start")
        output = stop(worker, timeout=30)  # SIGTERM while the job runs
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    assert mark.read_text() == "done"
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_the_worker_exits_within_seconds_of_sigterm_every_time(redis_server_url, redis_conn, tmp_path):
    # How long a worker takes to stop once told depends on how its threads interleave (see
    # test_worker_shutdown.py): stop it a few times, after a job, and give each only seconds.
    from rq import Queue
    from rq.job import JobStatus

    from sync.worker.queues import QUEUE_NAME

    env = environment(REDIS_URL=redis_server_url, DATABASE_URL=f"sqlite:///{tmp_path}/w.db",
                      PYTHONPATH=str(ROOT))
    for attempt in range(3):
        job = Queue(QUEUE_NAME, connection=redis_conn).enqueue(slow_job, str(tmp_path / f"mark{attempt}"), 0)
        worker = start(f"{BIN}/partnero-sync worker", env, cwd=tmp_path)
        try:
            wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, what="the worker to run a job")
            output = stop(worker, timeout=10)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0, output
        assert "unsubscribing from channel" in output  # it went through RQ's whole teardown
