"""Receiver benchmark: how much the durable inbox costs next to a bare Flask app and a naive
verify-and-enqueue receiver, served the same way and driven by the same load.

    .venv/bin/python bench/receiver.py            # all three, ~1.5 minutes
    .venv/bin/python bench/receiver.py --help

Targets, each served by gunicorn with ``--config python:app.server.gunicorn_config`` and the same
workers and threads:

  hello     (a) bench.apps:hello_app()  - a bare Flask POST endpoint
  naive     (b) bench.apps:naive_app()  - verify the signature, RQ ``Queue.enqueue`` per request
  receiver  (c) app:create_app()        - ours: verify, inbox row in PostgreSQL (group commit),
                                          a worker woken (one RQ wake-up job), 202

The load generator (bench/loadgen.py, a separate process) keeps N keep-alive connections busy,
each posting a new signed Partnero-shaped delivery as soon as the previous answer is in. After
(c) the script checks that every 202 has its row in ``webhook_events`` (and reports how many
are pending and the wake-up job queued for them).

It creates the PostgreSQL database ``partnero_bench`` (dropped first if left over), uses Redis db
13 (flushed before and after), binds only to 127.0.0.1 on free ports, and removes all of it on
exit, Ctrl-C or error. See bench/README.md for figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose app/ and sync/ are measured
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {
    "hello": ("a", "bench.apps:hello_app()", "bare Flask hello-world POST"),
    "naive": ("b", "bench.apps:naive_app()", "verify + rq enqueue per request"),
    "receiver": ("c", "app:create_app()", "ours: verify + PG inbox (group commit) + RQ"),
}
PATH = "/webhooks/partnero"
SECRET = "bench-secret-not-for-production"


class BenchError(Exception):
    pass


def _terminate(signum, frame):  # SIGTERM/SIGHUP: unwind like Ctrl-C so cleanup runs
    raise KeyboardInterrupt(f"signal {signum}")


# -- resources ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """The bench database: created fresh, schema by ``sync.store.schema.migrate``, dropped at the end."""

    def __init__(self, admin_dsn: str, name: str):
        if "bench" not in name:
            raise BenchError(f"refusing to drop/recreate database {name!r}: its name must contain 'bench'")
        self.admin_dsn = admin_dsn
        self.name = name
        self.created = False

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def recreate(self) -> str:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.created = True
        url = self.url()
        from sync.store import db, schema

        engine = db.make_engine(_sqlalchemy_url(url))
        try:
            schema.migrate(engine)
        finally:
            engine.dispose()
        return url

    def url(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.admin_dsn)
        user = info.get("user", "postgres")
        password = f":{info['password']}" if info.get("password") else ""
        host = info.get("host", "127.0.0.1")
        port = info.get("port", "5432")
        return f"postgresql://{user}{password}@{host}:{port}/{self.name}"

    def count_rows(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT status, count(*) FROM webhook_events GROUP BY status").fetchall()
            total = conn.execute("SELECT count(*), count(DISTINCT fingerprint) FROM webhook_events").fetchone()
        return {"total": total[0], "distinct_fingerprints": total[1], **{s: n for s, n in rows}}

    def drop(self) -> None:
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False


def _sqlalchemy_url(url: str) -> str:
    from sync.settings import normalize_database_url

    return normalize_database_url(url)


class RedisDb:
    """The dedicated Redis db index: flushed before and after use."""

    def __init__(self, url: str):
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        if int(db) == 0:
            raise BenchError("refusing to flush Redis db 0: give --redis-url a dedicated db index, e.g. /13")

    def flush(self) -> None:
        self.client.flushdb()

    def queue_count(self, name: str) -> int:
        from rq import Queue

        return Queue(name, connection=self.client).count


class Gunicorn:
    """One gunicorn master (its own process group), killed whatever happens."""

    def __init__(self, app: str, env: dict, workers: int, threads: int, extra: list[str], log: Path):
        self.port = free_port()
        self.workers = workers
        self.log_path = log
        self.cmd = [
            sys.executable, "-m", "gunicorn", app,
            "--config", "python:app.server.gunicorn_config",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers), "--threads", str(threads),
            "--chdir", str(ROOT), "--no-control-socket",
            *extra,
        ]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.proc.returncode}:\n{self.tail()}")
            booted = self.log_path.read_bytes().count(b"Booting worker with pid")
            if booted >= self.workers and self._answers(ready_path):
                return
            time.sleep(0.1)
        raise BenchError(f"gunicorn not ready after {timeout}s:\n{self.tail()}")

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError as exc:
            return path == "/" and exc.code == 404  # the baselines have no health check
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(p) for p in children]

    def cpu_by_worker(self) -> dict[int, float]:
        """User+system CPU seconds of each worker so far."""
        tick = os.sysconf("SC_CLK_TCK")
        found = {}
        for pid in self.worker_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / tick
        return found

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # master and workers: their own group
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker left behind
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        self.proc = None
        self._log.close()


def background_busy(seconds: float = 1.0) -> float:
    """How busy the machine is (percent of all cores) with nothing of ours running."""
    before = machine_cpu()
    time.sleep(seconds)
    after = machine_cpu()
    return 100 * (after[0] - before[0]) / max(after[1] - before[1], 1)


def cpu_by_program(names=("postgres", "redis-server")) -> dict[str, float]:
    """CPU seconds used so far by every process of each named program (any owner)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(names, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        comm = head.partition("(")[2]
        if comm in totals:
            fields = rest.split()
            totals[comm] += (int(fields[11]) + int(fields[12])) / tick
    return totals


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


# -- one target -----------------------------------------------------------------------------------


def run_target(name: str, args, workdir: Path, pg: Postgres, rds: RedisDb, cleanup: list) -> dict:
    letter, app, _ = TARGETS[name]
    env = _server_env(args)
    idle_busy = _wait_quiet(args)
    rds.flush()
    if name == "receiver":
        env["DATABASE_URL"] = pg.recreate()
    server = Gunicorn(app, env, args.workers, args.threads, args.gunicorn_arg,
                      workdir / f"gunicorn-{name}.log")
    cleanup.append(server.stop)
    try:
        server.start("/healthz" if name == "receiver" else "/")
        before = _cpu_readings(server)
        result = _drive(name, args, server, env, cleanup)
        _add_cpu_figures(result, before, _cpu_readings(server))
        result["background_busy_pct"] = idle_busy
        result["target"], result["letter"], result["app"] = name, letter, app
        result["server_log_errors"] = [
            line for line in server.tail(2000).splitlines()
            if " ERROR " in line or "Traceback" in line or "[CRITICAL]" in line
        ][:5]
        time.sleep(0.5)  # let a last enqueue land before counting
        _add_stored_counts(name, result, pg, rds)
        return result
    finally:
        server.stop()
        cleanup.remove(server.stop)
        rds.flush()
        if name == "receiver":
            pg.drop()


def _server_env(args) -> dict:
    """The servers' environment: ours, without gunicorn's own settings, with the bench's secret,
    Redis and --env."""
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")}
    env.update(
        PARTNERO_WEBHOOK_SECRET=SECRET,
        REDIS_URL=args.redis_url,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _wait_quiet(args) -> float:
    """Wait up to --wait-quiet seconds for the machine to be less than --quiet-pct busy; returns
    how busy it was last (percent), saying so when it is still too busy."""
    idle_busy = background_busy()
    waited = 0.0
    while idle_busy > args.quiet_pct and waited < args.wait_quiet:
        idle_busy = background_busy()  # something else is using the machine: give it a moment
        waited += 1.0
    if idle_busy > args.quiet_pct:
        print(f" [machine already {idle_busy:.0f}% busy before start]", end="", flush=True)
    return idle_busy


def _drive(name: str, args, server: Gunicorn, env: dict, cleanup: list) -> dict:
    """Run the load generator against ``server`` (and the profilers, with --profile); its result.
    The load generator is killed if it is still running when this returns or fails."""
    config = {
        "host": "127.0.0.1", "port": server.port, "path": PATH, "secret": SECRET,
        "connections": args.connections, "warmup": args.warmup, "duration": args.duration,
        "max_requests": args.max_requests, "request_timeout": args.request_timeout,
        "connect_stagger": args.connect_stagger,
    }
    loadgen = None
    try:
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(config)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        profilers = _start_profilers(args, server, name) if args.profile else []
        cleanup.extend(p.kill for p in profilers)
        limit = args.warmup + args.duration + args.request_timeout + 30
        try:
            out, err = loadgen.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            raise BenchError(f"load generator still running after {limit}s")
        if loadgen.returncode != 0:
            raise BenchError(f"load generator failed ({loadgen.returncode}):\n{err.decode(errors='replace')}")
        result = json.loads(out)
        for prof in profilers:
            try:
                prof.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prof.kill()
            cleanup.remove(prof.kill)
        return result
    finally:
        if loadgen is not None and loadgen.poll() is None:
            try:
                os.killpg(loadgen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            loadgen.wait(timeout=5)


def _cpu_readings(server: Gunicorn) -> tuple[dict[int, float], tuple[int, int], dict[str, float]]:
    """CPU used so far: by each gunicorn worker, by the whole machine, by PostgreSQL and Redis."""
    return server.cpu_by_worker(), machine_cpu(), cpu_by_program()


def _add_cpu_figures(result: dict, before: tuple, after: tuple) -> None:
    """Where the CPU went between two ``_cpu_readings``, per request and in shares."""
    workers_before, busy_before, others_before = before
    workers_after, busy_after, others_after = after
    cpu_before = sum(workers_before.values())
    cpu_after = sum(workers_after.values())
    answered = max(result["answered"], 1)
    # Keep-alive connections stay with the worker that accepted them: with several workers
    # the load may not be shared evenly. The share of each worker's CPU shows how it went.
    used = {pid: workers_after[pid] - workers_before.get(pid, 0.0) for pid in workers_after}
    result["worker_cpu_split_pct"] = sorted(
        (100 * v / max(sum(used.values()), 1e-9) for v in used.values()), reverse=True)
    result["server_cpu_us_per_request"] = (cpu_after - cpu_before) / answered * 1e6
    result["cpu_us_per_request"] = {
        "gunicorn workers": result["server_cpu_us_per_request"],
        **{prog: (others_after[prog] - others_before[prog]) / answered * 1e6 for prog in others_after},
        "load generator": result["loadgen_cpu_seconds"] / answered * 1e6,
    }
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
    result["machine_cpu_busy_pct"] = busy * 100
    # Whatever else ran meanwhile (other programs, another test suite): it skews the figures.
    tick = os.sysconf("SC_CLK_TCK")
    busy_seconds = (busy_after[0] - busy_before[0]) / tick
    all_cores_seconds = max(busy_after[1] - busy_before[1], 1) / tick
    ours = sum(result["cpu_us_per_request"].values()) * answered / 1e6
    result["other_load_pct"] = max(0.0, busy_seconds - ours) / all_cores_seconds * 100


def _add_stored_counts(name: str, result: dict, pg: Postgres, rds: RedisDb) -> None:
    """What the target left behind: for ours, the inbox rows against its 202s and the wake-up job;
    for the naive receiver, its queued jobs."""
    if name == "receiver":
        rows = pg.count_rows()
        result["durability"] = {
            "accepted_202": result["accepted_202"],
            "rows": rows["total"],
            "distinct_fingerprints": rows["distinct_fingerprints"],
            "pending_rows": rows.get("pending", 0),
            "rq_jobs_queued": rds.queue_count("partnero"),
            "ok": rows["total"] == result["accepted_202"],
        }
    elif name == "naive":
        result["rq_jobs_queued"] = rds.queue_count("partnero-bench")


def _start_profilers(args, server: Gunicorn, name: str) -> list[subprocess.Popen]:
    """py-spy on every worker for the measured window; collapsed stacks in --profile DIR."""
    args.profile.mkdir(parents=True, exist_ok=True)
    time.sleep(args.warmup)
    procs = []
    for pid in server.worker_pids():
        out = args.profile / f"{name}-w{args.workers}t{args.threads}-{pid}.txt"
        procs.append(subprocess.Popen(
            [args.py_spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)),
             "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out),
             *(["--gil"] if args.profile_gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        ))
    return procs


# -- report ---------------------------------------------------------------------------------------


def table(results: list[dict], args) -> str:
    head = (f"{'':3}{'target':<10}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'errors':>8}{'requests':>10}{'srv CPU us/req':>16}{'box CPU %':>11}{'other load %':>14}"
            f"  worker split %")
    lines = [head, "-" * len(head)]
    for r in results:
        m = r["measured"]
        lines.append(
            f"{r['letter'] + ')':3}{r['target']:<10}{m['rps']:>9.0f}{m['p50_ms']:>9.1f}"
            f"{m['p90_ms']:>9.1f}{m['p99_ms']:>9.1f}{m['max_ms']:>9.1f}{m['errors']:>8d}"
            f"{m['requests']:>10d}{r['server_cpu_us_per_request']:>16.0f}"
            f"{r['machine_cpu_busy_pct']:>11.0f}{r['other_load_pct']:>14.0f}"
            f"  {'/'.join(f'{x:.0f}' for x in r['worker_cpu_split_pct'])}"
        )
    lines += ["", "CPU per request (us), whole run incl. warm-up:"]
    for r in results:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_request"].items())
        total = sum(r["cpu_us_per_request"].values())
        lines.append(f"  {r['letter']}) {r['target']:<9} {parts}; total {total:.0f}")
    return "\n".join(lines)


def summarize(results: list[dict], args) -> tuple[str, bool]:
    by = {r["target"]: r for r in results}
    out = [table(results, args), ""]
    ok = True
    for r in results:
        m = r["measured"]
        if m["errors"] or r["transport_errors"]:
            ok = False
            out.append(f"ERRORS in {r['target']}: measured statuses {m['statuses']}, "
                       f"transport errors {r['transport_errors']}, samples {r['error_samples']}")
        split = r["worker_cpu_split_pct"]
        if len(split) > 1 and split[0] > 1.5 * 100 / len(split):
            out.append(f"WARNING: {r['target']}: the workers did not share the load evenly "
                       f"({'/'.join(f'{x:.0f}' for x in split)} % of their CPU): keep-alive "
                       f"connections stay with the worker that accepted them")
        if r["other_load_pct"] > 10:
            out.append(f"WARNING: other programs used {r['other_load_pct']:.0f}% of the machine during "
                       f"{r['target']}; its figures are skewed")
        if r["server_log_errors"]:
            out.append(f"server log of {r['target']}: {r['server_log_errors']}")
    c = by.get("receiver")
    if c:
        for base in ("hello", "naive"):
            if base in by:
                ratio = c["measured"]["rps"] / max(by[base]["measured"]["rps"], 1e-9)
                out.append(f"c/{TARGETS[base][0]} (receiver/{base}) throughput: {ratio:.2f}")
        p99 = c["measured"]["p99_ms"]
        d = c["durability"]
        if "naive" in by:
            ratio = c["measured"]["rps"] / max(by["naive"]["measured"]["rps"], 1e-9)
            out.append(f"goal c/b >= 1.00: {'met' if ratio >= 1.0 else 'NOT met'} ({ratio:.3f}); "
                       f"goal p99 < 50 ms: {'met' if p99 < 50 else 'NOT met'} ({p99:.1f} ms)")
        out.append(
            f"durability (c): {d['accepted_202']} answers 202, {d['rows']} rows in webhook_events "
            f"({d['distinct_fingerprints']} distinct); {d['pending_rows']} pending rows for "
            f"{d['rq_jobs_queued']} queued wake-up: "
            + ("OK, every 202 has its row" if d["ok"] else "MISMATCH")
        )
        if not d["ok"]:
            ok = False
    return "\n".join(out), ok


def _defaults() -> tuple[int, int]:
    from app.server import gunicorn_config

    workers = int(os.environ.get("WEB_CONCURRENCY", getattr(gunicorn_config, "workers", 1)))
    return workers, int(getattr(gunicorn_config, "threads", 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_load_options(p)
    _add_setup_options(p)
    _add_output_options(p)
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    if not (1 <= args.connections <= 1000 and args.duration > 0 and args.warmup >= 0):
        p.error("need 1..1000 connections, a positive duration and a non-negative warm-up")
    if args.duration + args.warmup > 600 or args.max_requests > 5_000_000:
        p.error("bounded: at most 600 s and 5,000,000 requests per target")
    return args


def _add_load_options(p: argparse.ArgumentParser) -> None:
    """What is measured: the load, the servers' workers and threads, the targets and rounds."""
    workers, threads = _defaults()
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target (not measured)")
    p.add_argument("--connections", "-c", type=int, default=16, help="concurrent keep-alive connections")
    p.add_argument("--connect-stagger", type=float, default=0.02, metavar="SECONDS",
                   help="open the connections this far apart (during the warm-up), so that they "
                        "spread over the gunicorn workers; 0 opens them all at once")
    p.add_argument("--workers", "-w", type=int, default=workers,
                   help="gunicorn workers (from WEB_CONCURRENCY or app.server.gunicorn_config)")
    p.add_argument("--threads", "-t", type=int, default=threads,
                   help="gunicorn threads per worker (from app.server.gunicorn_config)")
    p.add_argument("--targets", default="hello,naive,receiver",
                   help="comma-separated subset of hello,naive,receiver, run in that order")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the targets this many times (interleaved); the table shows every round")
    p.add_argument("--max-requests", type=int, default=400_000,
                   help="cap on requests per target (warm-up included)")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds before an unanswered request counts as an error")


def _add_setup_options(p: argparse.ArgumentParser) -> None:
    """Where it runs: the database, Redis, the servers' environment, how quiet the machine must be."""
    p.add_argument("--pg-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="where to create the bench database")
    p.add_argument("--db-name", default="partnero_bench", help="bench database (dropped and recreated)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                   help="Redis with a dedicated db index (flushed before and after)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the servers, e.g. LOG_LEVEL=WARNING (repeatable)")
    p.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                   help="extra gunicorn argument for every target (repeatable; use --gunicorn-arg=--x)")
    p.add_argument("--wait-quiet", type=float, default=20.0,
                   help="before each target, wait up to this many seconds for the machine to be "
                        "less than --quiet-pct busy (other processes skew the figures)")
    p.add_argument("--quiet-pct", type=float, default=15.0, help="see --wait-quiet and --retries")
    p.add_argument("--retries", type=int, default=1,
                   help="measure a target again (up to this many times) when other programs used "
                        "more than --quiet-pct of the machine during its run")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """What it leaves: the results file, profiles, the servers' logs."""
    p.add_argument("--json", type=Path, default=None,
                   help="write all results here (when not given: bench/results/receiver-<time>.json)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="run py-spy on the workers during the measured window; stacks go to DIR")
    p.add_argument("--profile-gil", action="store_true",
                   help="profile only the thread holding the GIL (where a worker's CPU goes)")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable")
    p.add_argument("--keep-logs", action="store_true", help="keep the gunicorn logs (path printed)")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="partnero-bench-"))
    cleanup: list = []
    pg = rds = None
    results: list[dict] = []
    started = datetime.now(timezone.utc)
    exit_code = 1
    try:
        _check_code_root()
        pg = Postgres(args.pg_admin_dsn, args.db_name)
        rds = RedisDb(args.redis_url)
        _print_header(args, started)
        ok = _run_rounds(args, workdir, pg, rds, cleanup, results)
        exit_code = 0 if ok else 3
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        exit_code = 130
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        exit_code = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        _clean_up(cleanup, rds, pg)
        if args.keep_logs:
            print(f"gunicorn logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        _write_results(args, started, results)
    return exit_code


def _check_code_root() -> None:
    """The code measured is this checkout's, not an installed copy."""
    import sync

    if not Path(sync.__file__).resolve().is_relative_to(ROOT):
        raise BenchError(f"sync is imported from {sync.__file__}, not from {ROOT}")


def _print_header(args, started: datetime) -> None:
    print(f"partnero-sync receiver benchmark, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"code from {ROOT}")
    print(f"gunicorn --config python:app.server.gunicorn_config --workers {args.workers} --threads "
          f"{args.threads} {' '.join(args.gunicorn_arg)}; {args.connections} connections; "
          f"{args.warmup:g}s warm-up + {args.duration:g}s measured per target"
          + (f"; env {' '.join(args.env)}" if args.env else ""))


def _run_rounds(args, workdir: Path, pg: Postgres, rds: RedisDb, cleanup: list, results: list[dict]) -> bool:
    """Every round of every target, each result added to ``results`` as it comes, with a summary
    per round (several rounds) or at the end (one); whether every check held."""
    for round_no in range(1, args.rounds + 1):
        for name in args.targets:
            print(f"  [{round_no}/{args.rounds}] {TARGETS[name][0]}) {name}: {TARGETS[name][2]} ...",
                  end="", flush=True)
            r = _measure(name, round_no, args, workdir, pg, rds, cleanup)
            results.append(r)
            m = r["measured"]
            print(f" {m['rps']:.0f} req/s, p99 {m['p99_ms']:.1f} ms, {m['errors']} errors", flush=True)
        if args.rounds > 1:
            print()
            text, ok = summarize([r for r in results if r["round"] == round_no], args)
            print(f"round {round_no}:\n{text}\n")
    text, ok = summarize(results, args) if args.rounds == 1 else (None, True)
    if args.rounds == 1:
        print()
        print(text)
    else:
        ok = all(summarize([r for r in results if r["round"] == n], args)[1]
                 for n in range(1, args.rounds + 1))
    return ok


def _measure(name: str, round_no: int, args, workdir: Path, pg: Postgres, rds: RedisDb, cleanup: list) -> dict:
    """One target's result in round ``round_no``, measured again (up to --retries times) while
    other programs took more than --quiet-pct of the machine; ``attempts`` says how many runs it took."""
    for attempt in range(args.retries + 1):
        r = run_target(name, args, workdir, pg, rds, cleanup)
        if r["other_load_pct"] <= args.quiet_pct or attempt == args.retries:
            break
        print(f" other programs took {r['other_load_pct']:.0f}% of the machine, "
              f"measuring again ...", end="", flush=True)
    r["round"] = round_no
    r["attempts"] = attempt + 1
    return r


def _clean_up(cleanup: list, rds: RedisDb | None, pg: Postgres | None) -> None:
    """Stop what is still running (last started first), flush Redis, drop the database; a failing
    step is printed and the others still run."""
    for stop in reversed(cleanup):
        try:
            stop()
        except Exception as exc:  # keep cleaning up
            print(f"cleanup: {exc!r}", file=sys.stderr)
    for what in (lambda: rds and rds.flush(), lambda: pg and pg.drop()):
        try:
            what()
        except Exception as exc:
            print(f"cleanup: {exc!r}", file=sys.stderr)


def _write_results(args, started: datetime, results: list[dict]) -> None:
    path = args.json or ROOT / "bench" / "results" / f"receiver-{started:%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"started": started.isoformat(), "cores": os.cpu_count(), "root": str(ROOT),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
