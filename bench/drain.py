"""Drain benchmark: a backlog of deliveries, worked off into PostgreSQL and a Salesforce stand-in,
and the live freshness of a steady stream.

    .venv/bin/python bench/drain.py                                   # 10,000, burst, 2 workers, 50 ms a call
    .venv/bin/python bench/drain.py --arrival one-by-one --deliveries 100000
    .venv/bin/python bench/drain.py --freshness 60 --skip-drain        # only the live measurement
    .venv/bin/python bench/drain.py --programs 3 --blips 0 --bulk-threshold 0   # one program against three
    .venv/bin/python bench/drain.py --help

1. Receive: Partnero-shaped deliveries (partners, customers, sales, refunds, Partnero's retries,
   out of order) go through the receiver's intake into a fresh PostgreSQL database, with the
   workers suspended: ``--arrival burst`` sends them 16 at a time (commits shared by many),
   ``--arrival one-by-one`` one at a time (one commit each: how webhooks arrive on a normal day).
2. Drain (timed): the workers (``partnero-sync worker`` processes, started before and suspended)
   resume and work until every delivery is processed and Salesforce holds every record (checked
   record by record at the end). Prints deliveries/s, deliveries per Salesforce call and the
   workers' peak RSS.
3. Naive, in the same run: one RQ job and one single-record upsert call per delivery (same
   database, same stand-in, RQ's SimpleWorker, connections kept between jobs), on a sample: the
   naive way is slow, so its rate is measured on --naive-sample deliveries.
4. Blips (``--blips N``, 3 by default; 0 skips it): the same backlog drained again, the same way,
   while another session terminates a worker's PostgreSQL backend in the middle of a transaction
   N times (``pg_terminate_backend``: the worker meets a lost connection, a passing error), early in
   the drain, a few tenths of a second apart, so the same oldest rows are likely hit more than once.
   Prints its rate as a ratio of the clean run's, measured just before in the same run.
5. Programs (``--programs N``): the same backlog drained again, spread over N Partnero programs
   (``PARTNERO_PROGRAMS``; a partner's records, customers, sales and refunds are one program's),
   and its rate printed as a ratio of the one-program run's, measured just before in the same run.
6. Freshness (``--freshness SECONDS``): the web process (the Procfile's gunicorn) and the workers
   run; a sender posts signed deliveries at ``--rate`` per second (each a new partner); for each,
   the time from its 202 to its row in the warehouse (``processed_at``) and to its record in
   Salesforce (``synced_at``), p50 and p99.

Uses the PostgreSQL database partnero_drain (dropped first), Redis db 12 (flushed), and the
HTTPS Salesforce stand-in from tests/fakes on a free loopback port; cleans up on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from rq.suspension import resume, suspend  # noqa: E402

from bench.common import (  # noqa: E402
    BIN,
    PeakRss,
    drop_database,
    fresh_database,
    salesforce_env,
    start_workers,
    stop_workers,
)
from bench.loadgen import percentile  # noqa: E402
from bench.receiver import free_port  # noqa: E402

DB_NAME = "partnero_drain"
REDIS_URL = "redis://127.0.0.1:6379/12"
RELATIONSHIPS = {
    ("Account", "Partnero_Partner__r"): ("Contact", "Partnero_Partner_Id__c"),
    ("Partnero_Transaction__c", "Partnero_Customer__r"): ("Account", "Partnero_Customer_Key__c"),
    ("Partnero_Transaction__c", "Partnero_Partner__r"): ("Contact", "Partnero_Partner_Id__c"),
}


def stamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(1773400000 + seconds))


def burst(total: int, rng: random.Random) -> list[dict]:
    """A realistic mix: a few partners, more customers, mostly sales, some refunds and retries."""
    partners = max(10, total // 40)
    customers = max(20, total // 6)
    deliveries: list[dict] = []
    for p in range(partners):
        for step in range(2):
            deliveries.append({"event": "partner.created" if step == 0 else "partner.updated",
                               "created_at": stamp(p + step * 1000), "data": {
                "id": f"ptn_{p}", "key": f"partner-{p}", "email": f"Partner{p}@Example.com",
                "name": rng.choice(["Maria", "Zoë", "李", "Ann"]), "surname": rng.choice(["Lopez", "", None]),
                "status": "active", "approved": True, "updated_at": stamp(p + step * 1000)}})
    for c in range(customers):
        deliveries.append({"event": "customer.created", "created_at": stamp(2000 + c), "data": {
            "key": f"cust_{c}", "partner": f"ptn_{c % partners}", "email": f"c{c}@x.io", "name": "C",
            "surname": str(c), "status": "active", "updated_at": stamp(2000 + c)}})
    sales = total - len(deliveries)
    refunds = sales // 12
    retries = sales // 30
    sales -= refunds + retries
    sale_docs = []
    for t in range(sales):
        customer = rng.randrange(customers)
        partner = customer % partners
        amount = round(rng.uniform(5, 900), 2)
        sale_docs.append({"event": "transaction.created", "created_at": stamp(5000 + t), "data": {
            "key": f"txn_{t}", "action": "sale", "amount": amount, "amount_units": "usd",
            "partner": f"ptn_{partner}", "customer": f"cust_{customer}", "created_at": stamp(5000 + t),
            "rewards": [{"key": f"txn_{t}", "partner": f"ptn_{partner}", "amount": round(amount * 0.3, 3),
                         "amount_units": "USD", "status": rng.choice(["ok", "review_period"])}]}})
    deliveries += sale_docs
    for t in rng.sample(range(sales), refunds):
        deliveries.append({"event": "transaction.deleted", "created_at": stamp(90000 + t),
                           "data": {"key": f"txn_{t}"}})
    deliveries += rng.sample(sale_docs, retries)  # Partnero's retries: the same bytes again
    # Unordered: mostly in order, with local shuffles (a refund may come before its sale).
    keyed = [(i + rng.uniform(-300, 300), d) for i, d in enumerate(deliveries)]
    return [d for _, d in sorted(keyed, key=lambda x: x[0])]


def spread(documents: list[dict], count: int) -> tuple[list[str], list[str]]:
    """The programs' names, and each document's program: a partner's, so that a program holds its
    partners' customers, sales and refunds (a record and its parents are always one program's)."""
    names = [f"program-{i + 1}" for i in range(count)]
    partner_of_sale = {d["data"]["key"]: d["data"]["partner"] for d in documents if d["event"] == "transaction.created"}

    def partner(document: dict) -> str:
        data = document["data"]
        if document["event"].startswith("partner."):
            return data["id"]
        return data.get("partner") or partner_of_sale[data["key"]]

    return names, [names[int(partner(d).removeprefix("ptn_")) % count] for d in documents]


def receive(services, documents: list[dict], concurrency: int = 16, progress: bool = True,
            programs: list[str] | None = None) -> None:
    """``documents`` through the receiver's intake, each of its program (``programs``, one per
    document; None: all of program default)."""
    from sync.pipeline.intake import Intake
    from sync.store.inbox import Delivery, DeliveryStatus

    intake = Intake(services.inbox, services.queue)
    handled = services.mappings.events

    def submit(item: tuple[str, dict]):
        program, document = item
        body = json.dumps(document).encode()
        status = DeliveryStatus.PENDING if document["event"] in handled else DeliveryStatus.IGNORED
        return intake.submit(Delivery(body, document["event"], status, program=program))

    done_count = 0
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for receipt in pool.map(submit, zip(programs or ["default"] * len(documents), documents)):
            assert receipt.status in ("queued", "duplicate"), receipt
            done_count += 1
            if progress and done_count % 10_000 == 0:
                rate = done_count / (time.monotonic() - started)
                print(f"    received {done_count}/{len(documents)} ({rate:.0f}/s)", flush=True)


def wait_for_workers(connection, count: int, timeout: float = 60) -> None:
    from rq import Worker

    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=connection)) < count:
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not start")
        time.sleep(0.1)


def done(engine) -> tuple[bool, int, int]:
    """Whether nothing is left to do, read in one snapshot: counted one after the other, a fold
    committing between two counts (commission changes gone, Contacts marked due) would be seen
    as neither, and the drain would stop early."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        pending = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE status = 'pending'")).scalar()
        backlog = conn.execute(sa.text(
            "SELECT count(*) FROM crm_outbox WHERE status IN ('pending', 'waiting') AND sync_version IS NOT NULL"
        )).scalar()
        # Commission changes not folded yet: their partners' totals are still to be sent.
        backlog += conn.execute(sa.text("SELECT count(*) FROM crm_commission_changes")).scalar()
    return pending == 0 and backlog == 0, pending, backlog


#: The workers' sessions name themselves so, so that blips hit only them (not this script's).
WORKER_APP_NAME = "bench-drain-worker"


class Blips(threading.Thread):
    """Terminates a worker's PostgreSQL backend in the middle of a transaction ``count`` times,
    ``gap`` seconds apart: to the worker, a lost connection (a passing database error)."""

    def __init__(self, url: str, count: int, gap: float = 0.3):
        super().__init__(daemon=True)
        self.url, self.count, self.gap = url, count, gap
        self.at: list[float] = []
        self.started = time.monotonic()
        self._stopping = threading.Event()

    def run(self) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        find = sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND xact_start IS NOT NULL"
                       " AND state IN ('active', 'idle in transaction') ORDER BY xact_start LIMIT 1")
        try:
            with engine.connect() as conn:
                while len(self.at) < self.count and not self._stopping.is_set():
                    pid = conn.execute(find, {"name": WORKER_APP_NAME}).scalar()
                    if pid is not None and conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar():
                        self.at.append(time.monotonic() - self.started)
                        self._stopping.wait(self.gap)
                    else:
                        self._stopping.wait(0.01)
        finally:
            engine.dispose()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)


def run_ours(args, documents, fake, env, blips: int = 0, programs: tuple[list[str], list[str]] | None = None) -> dict:
    """Drain ``documents`` (of program default, or spread over ``programs``: their names, each
    document's program); returns the figures."""
    from sync.services import Services
    from sync.settings import Settings
    from sync.store import db

    url = fresh_database(DB_NAME)
    env = {**env, "DATABASE_URL": f"{url}?application_name={WORKER_APP_NAME}"}
    if programs is not None:
        env["PARTNERO_PROGRAMS"] = ",".join(programs[0])
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings.from_env({**env, "DATABASE_URL": url})
    services = Services.build(settings)
    services.migrate()
    # Workers start first, suspended, so the timed drain does not include interpreter start-up.
    connection = redis.Redis.from_url(REDIS_URL)
    suspend(connection)
    workers = start_workers(env, args.workers)
    wait_for_workers(connection, args.workers)
    _receive_backlog(services, documents, args.arrival, programs[1] if programs is not None else None)

    calls_before = fake.count("collections") + fake.count("upsert")
    sampler = PeakRss([w.pid for w in workers])
    started = time.monotonic()
    resume(connection)
    sampler.start()
    injector = Blips(url, blips) if blips else None
    if injector is not None:
        injector.start()
    engine = db.engine_for(url)
    try:
        warehouse_done, elapsed = _wait_drained(engine, started, args.timeout)
    finally:
        stop_workers(workers)
        sampler.stop()
        if injector is not None:
            injector.stop()
    calls = fake.count("collections") + fake.count("upsert") - calls_before
    stored = services.inbox.count()
    check_salesforce(engine, fake)
    engine.dispose()
    print(f"  every delivery in the warehouse after {warehouse_done:.1f}s, in Salesforce after {elapsed:.1f}s")
    if injector is not None:
        _check_blips(injector, blips)
    return {"deliveries": stored, "seconds": elapsed, "rate": stored / elapsed, "calls": calls,
            "per_call": stored / max(calls, 1), "peak_rss_mb": sampler.mb,
            "warehouse_seconds": warehouse_done, "blips": injector.at if injector is not None else []}


def _receive_backlog(services, documents: list[dict], arrival: str, programs: list[str] | None) -> None:
    """The backlog through the receiver's intake, as it arrived (``--arrival``), each delivery of
    its program; prints how long it took and how many were stored."""
    started = time.monotonic()
    receive(services, documents, concurrency=1 if arrival == "one-by-one" else 16, programs=programs)
    received = time.monotonic() - started
    print(f"  received {len(documents)} deliveries in {received:.1f}s "
          f"({services.inbox.count()} stored, {len(documents) - services.inbox.count()} duplicates)")


def _wait_drained(engine, started: float, timeout: float) -> tuple[float | None, float]:
    """Wait until nothing is left to do (``timeout`` seconds from ``started`` at most); returns the
    seconds from ``started`` until the warehouse held every delivery, and until Salesforce did."""
    deadline = started + timeout
    warehouse_done = None
    while time.monotonic() < deadline:
        finished, pending, backlog = done(engine)
        if not pending and warehouse_done is None:
            warehouse_done = time.monotonic() - started
        if finished:
            break
        time.sleep(0.5)  # counting is not free: do not weigh on the database being measured
    else:
        raise SystemExit(f"not drained after {timeout}s: {pending} deliveries, {backlog} CRM records left")
    return warehouse_done, time.monotonic() - started


def _check_blips(injector: Blips, blips: int) -> None:
    """Print when the worker backends were terminated; stop the benchmark if fewer than ``blips`` were."""
    print(f"  {len(injector.at)} worker backends terminated mid-transaction, at "
          + ", ".join(f"{t:.1f}s" for t in injector.at))
    if len(injector.at) < blips:
        raise SystemExit(f"only {len(injector.at)} of {blips} blips could be injected")


def check_salesforce(engine, fake) -> None:
    """Every outbox record is in Salesforce, with the fields it should have."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT object, external_id, fields, status FROM crm_outbox "
                                    "WHERE sync_version IS NOT NULL")).all()
    fields_of = {"Contact": "Partnero_Partner_Id__c", "Account": "Partnero_Customer_Key__c",
                 "Partnero_Transaction__c": "Partnero_Transaction_Key__c"}
    wrong = []
    for obj, key, fields, status in rows:
        record = fake.get(obj, fields_of[obj], key)
        fields = fields if isinstance(fields, dict) else json.loads(fields)
        if status != "synced" or record is None or any(
            record.get(k) != v for k, v in fields.items() if not k.endswith("__r")
        ):
            wrong.append((obj, key, status))
    if wrong:
        with engine.connect() as conn:
            why = conn.execute(sa.text("SELECT object, status, error_code, error_message, count(*) FROM crm_outbox "
                                       "WHERE status <> 'synced' GROUP BY 1, 2, 3, 4")).all()
        raise SystemExit(f"{len(wrong)} of {len(rows)} Salesforce records are missing or differ, e.g. {wrong[:3]}; "
                         f"not synced: {why[:5]}")
    print(f"  checked: all {len(rows)} records are in Salesforce as the warehouse says")


def run_naive(args, documents, fake, env) -> dict:
    """One RQ job and one single-record upsert call per delivery."""
    from rq import Queue

    url = fresh_database(DB_NAME)
    env = {**env, "DATABASE_URL": url, "PYTHONPATH": str(ROOT), "NAIVE_INSTANCE_URL": fake.instance_url,
           "NAIVE_SESSION_ID": fake.issue_session()}
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    from sync.services import Services
    from sync.settings import Settings

    Services.build(Settings.from_env(env)).migrate()
    sample = documents[: args.naive_sample]
    queue = Queue("naive", connection=connection)
    calls_before = fake.count("upsert")
    # RQ's own worker command refuses to start while RQ is suspended: start, then enqueue.
    workers = [subprocess.Popen([str(BIN / "rq"), "worker", "naive", "-u", REDIS_URL,
                                 "--worker-class", "rq.worker.SimpleWorker"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
               for _ in range(args.workers)]
    wait_for_workers(connection, args.workers)
    sampler = PeakRss([w.pid for w in workers])
    sampler.start()
    started = time.monotonic()
    with connection.pipeline() as pipe:
        for document in sample:
            queue.enqueue("bench.naive_jobs.naive_job", json.dumps(document), pipeline=pipe)
        pipe.execute()
    time.sleep(0.2)
    while queue.count or queue.started_job_registry.count:
        if time.monotonic() - started > args.timeout:
            raise SystemExit("the naive run did not finish")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stop_workers(workers)
    sampler.stop()
    failed = queue.failed_job_registry.count
    if failed:
        raise SystemExit(f"the naive run failed {failed} of its jobs")
    calls = fake.count("upsert") - calls_before
    return {"deliveries": len(sample), "seconds": elapsed, "rate": len(sample) / elapsed, "calls": calls,
            "per_call": len(sample) / max(calls, 1), "peak_rss_mb": sampler.mb, "failed": failed}


def run_freshness(args, fake, env) -> dict:
    """A steady stream through the real web process and workers: 202 -> warehouse, 202 -> Salesforce."""
    url = fresh_database(DB_NAME)
    secret = "bench-secret"
    port = free_port()
    env = {**env, "DATABASE_URL": url, "PARTNERO_WEBHOOK_SECRET": secret, "PORT": str(port),
           "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}  # the Procfile's gunicorn is this venv's
    redis.Redis.from_url(REDIS_URL).flushdb()
    subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    web = subprocess.Popen(["/bin/sh", "-c", f"exec {procfile['web']}"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = start_workers(env, args.workers, new_session=True)
    engine = sa.create_engine(url)
    accepted: dict[str, float] = {}  # partner id -> when its 202 arrived (epoch seconds)
    try:
        wait_for_workers(redis.Redis.from_url(REDIS_URL), args.workers)
        _wait_for_web(port)
        sent_for = _send_stream(args.rate, args.freshness, port, secret, accepted)
        _wait_caught_up(engine)
        with engine.connect() as conn:
            processed = dict(conn.execute(sa.text(
                "SELECT entity_id, processed_at FROM webhook_events WHERE status = 'processed'")).all())
            synced = dict(conn.execute(sa.text(
                "SELECT external_id, synced_at FROM crm_outbox WHERE object = 'Contact' AND synced_at IS NOT NULL")).all())
    finally:
        for process in (web, *workers):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in (web, *workers):
            process.wait(timeout=60)
        engine.dispose()
    return _freshness(accepted, processed, synced, sent_for)


def _wait_for_web(port: int) -> None:
    """Wait (30 s at most) until the web process answers its health check."""
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the web process did not start")
            time.sleep(0.2)


def _send_stream(rate: float, seconds: float, port: int, secret: str, accepted: dict[str, float]) -> float:
    """Post a signed new partner every 1/``rate`` seconds for ``seconds``, each expected to be answered
    202; notes in ``accepted`` when each 202 arrived, and returns how long the sending took."""
    import urllib.request

    from sync.core.signature import sign

    total = int(rate * seconds)
    interval = 1 / rate
    start = time.monotonic()

    def post(n: int) -> None:
        partner_id = f"ptn_live_{n}"
        stamp_now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        body = json.dumps({"event": "partner.created", "created_at": stamp_now, "data": {
            "id": partner_id, "email": f"live{n}@example.com", "name": "Live", "surname": str(n),
            "status": "active", "updated_at": stamp_now}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/partnero", data=body,
                                         headers={"Signature": sign(body, secret)}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        accepted[partner_id] = time.time()

    with ThreadPoolExecutor(16) as pool:
        futures = []
        for n in range(total):  # open loop: one delivery every 1/rate seconds, whatever the answers do
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(post, n))
        for future in futures:
            future.result()
    return time.monotonic() - start


def _wait_caught_up(engine) -> None:
    """Wait (2 minutes at most) until no delivery is pending and every Contact is synced."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            left = conn.execute(sa.text(
                "SELECT count(*) FROM crm_outbox WHERE object = 'Contact' AND status <> 'synced'")).scalar()
            pending = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE status = 'pending'")).scalar()
        if not left and not pending:
            break
        time.sleep(0.2)


def _freshness(accepted: dict[str, float], processed: dict, synced: dict, sent_for: float) -> dict:
    """p50 and p99 of the time from each 202 to the delivery's row in the warehouse and to its
    record in Salesforce; the benchmark stops if any is missing."""
    def lag(ts, partner_id) -> float:
        return ts.timestamp() - accepted[partner_id]

    warehouse = sorted(lag(processed[p], p) for p in accepted if p in processed)
    crm = sorted(lag(synced[p], p) for p in accepted if p in synced)
    if len(warehouse) < len(accepted) or len(crm) < len(accepted):
        raise SystemExit(f"freshness: {len(accepted) - len(warehouse)} deliveries not in the warehouse, "
                         f"{len(accepted) - len(crm)} not in Salesforce after 2 minutes")
    return {"deliveries": len(accepted), "rate": len(accepted) / sent_for,
            "warehouse_p50": percentile(warehouse, 50), "warehouse_p99": percentile(warehouse, 99),
            "salesforce_p50": percentile(crm, 50), "salesforce_p99": percentile(crm, 99)}


def main() -> None:
    args = _parse_args()

    from tests.fakes.salesforce import FakeSalesforce
    from tests.salesforce_orgs import set_up

    fake = FakeSalesforce(relationships=RELATIONSHIPS, max_calls=1000)
    # The org as an admin sets it up for the mappings: typed fields, so a Bulk API 2.0 job's CSV
    # cells are read back as the numbers and dates a Collections call sends (above
    # SALESFORCE_BULK_THRESHOLD records an object goes in a job).
    set_up(fake)
    fake.start()
    ours = naive = live = blipped = spread_out = None
    try:
        fake.latency = args.latency
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SALESFORCE_", "DATABASE_URL"))},
               "REDIS_URL": REDIS_URL, "MAPPINGS_DIR": str(ROOT / "mappings"), "LOG_LEVEL": "WARNING",
               "REQUESTS_CA_BUNDLE": fake.ca_bundle, **salesforce_env(fake)}
        if args.bulk_threshold is not None:
            env["SALESFORCE_BULK_THRESHOLD"] = str(args.bulk_threshold)
        os.environ["REQUESTS_CA_BUNDLE"] = fake.ca_bundle
        if not args.skip_drain:
            ours, blipped, naive, spread_out = _run_drains(args, fake, env)
        if args.freshness:
            print(f"freshness: {args.rate:.0f} deliveries/s for {args.freshness:.0f} s through the web process")
            live = run_freshness(args, fake, env)
    finally:
        fake.stop()
        drop_database(DB_NAME)
        redis.Redis.from_url(REDIS_URL).flushdb()

    print()
    if ours is not None:
        _print_drains(ours, naive)
    if blipped is not None:
        _print_blipped(blipped, ours)
    if spread_out is not None:
        _print_spread(spread_out, ours, args.programs)
    if live is not None:
        _print_freshness(live)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=10_000, help="size of the backlog (default 10,000)")
    parser.add_argument("--arrival", choices=["burst", "one-by-one"], default="burst",
                        help="how the backlog arrived: 16 at a time (shared commits) or one commit each")
    parser.add_argument("--workers", type=int, default=2, help="worker processes draining (default 2)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per Salesforce call")
    parser.add_argument("--naive-sample", type=int, default=300, help="deliveries for the naive run")
    parser.add_argument("--blips", type=int, default=3,
                        help="also drain the backlog again with this many transient database errors (0: skip)")
    parser.add_argument("--freshness", type=float, default=0, metavar="SECONDS",
                        help="also measure freshness of a steady stream for this long (0: skip)")
    parser.add_argument("--rate", type=float, default=50, help="deliveries per second for --freshness")
    parser.add_argument("--skip-drain", action="store_true", help="only the freshness measurement")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="give up on a drain after this many seconds (default 1800)")
    parser.add_argument("--bulk-threshold", type=int, default=None, metavar="N",
                        help="the workers' SALESFORCE_BULK_THRESHOLD (0: Collections calls only, so that no "
                             "Bulk API 2.0 job's minute of gathering weighs on a comparison; default: the service's)")
    parser.add_argument("--programs", type=int, default=1, metavar="N",
                        help="also drain the backlog spread over N Partnero programs (each partner's records one "
                             "program's), and compare with one program (default 1: skip)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated backlog (same seed, same deliveries)")
    return parser.parse_args()


def _run_drains(args, fake, env) -> tuple[dict, dict | None, dict, dict | None]:
    """The backlog drained ours, ours again with blips (unless --blips 0), ours again spread over
    programs (with --programs above 1), and the naive way; the Salesforce stand-in emptied after each."""
    documents = burst(args.deliveries, random.Random(args.seed))
    print(f"backlog of {len(documents)} deliveries arrived {args.arrival}, {args.workers} workers, "
          f"Salesforce stand-in at {args.latency * 1000:.0f} ms per call")
    print("ours:")
    ours = run_ours(args, documents, fake, env)
    _empty(fake)
    blipped = None
    if args.blips:
        print(f"ours again, with {args.blips} transient database errors:")
        blipped = run_ours(args, documents, fake, env, blips=args.blips)
        _empty(fake)
    spread_out = None
    if args.programs > 1:
        print(f"ours again, the same backlog spread over {args.programs} programs:")
        spread_out = run_ours(args, documents, fake, env, programs=spread(documents, args.programs))
        _empty(fake)
    print(f"naive (sample of {args.naive_sample}):")
    naive = run_naive(args, documents, fake, env)
    _empty(fake)
    return ours, blipped, naive, spread_out


def _empty(fake) -> None:
    """The Salesforce stand-in as it started: no records (its objects and fields stay)."""
    fake.reset()


def _print_drains(ours: dict, naive: dict) -> None:
    print(f"{'':8}{'deliveries':>11}{'seconds':>9}{'deliv/s':>9}{'SF calls':>9}{'deliv/call':>11}{'peak RSS':>10}")
    for name, r in (("ours", ours), ("naive", naive)):
        print(f"{name:8}{r['deliveries']:>11}{r['seconds']:>9.1f}{r['rate']:>9.0f}{r['calls']:>9}"
              f"{r['per_call']:>11.1f}{r['peak_rss_mb']:>8.0f}MB")
    print(f"ratios ours/naive: deliveries/s x{ours['rate'] / naive['rate']:.1f}, "
          f"deliveries per call x{ours['per_call'] / naive['per_call']:.1f}")
    goals = [("deliveries/s >= 1000", ours["rate"] >= 1000), ("deliveries per call >= 100", ours["per_call"] >= 100),
             ("worker RSS < 200 MB", ours["peak_rss_mb"] < 200)]
    print("goals: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))


def _print_blipped(blipped: dict, ours: dict) -> None:
    ratio = blipped["rate"] / ours["rate"]
    print(f"with {len(blipped['blips'])} transient database errors: {blipped['rate']:.0f} deliveries/s "
          f"({blipped['seconds']:.1f} s; warehouse done after {blipped['warehouse_seconds']:.1f} s), "
          f"x{ratio:.2f} of the clean run's {ours['rate']:.0f}/s")
    print(f"goal: within 10 % of the clean run: {'met' if ratio >= 0.9 else 'NOT met'}")


def _print_spread(spread_out: dict, ours: dict, programs: int) -> None:
    ratio = spread_out["rate"] / ours["rate"]
    print(f"spread over {programs} programs: {spread_out['rate']:.0f} deliveries/s ({spread_out['seconds']:.1f} s; "
          f"warehouse done after {spread_out['warehouse_seconds']:.1f} s; {spread_out['calls']} Salesforce calls), "
          f"x{ratio:.2f} of one program's {ours['rate']:.0f}/s")
    print(f"goal: within 10 % of one program: {'met' if ratio >= 0.9 else 'NOT met'}")


def _print_freshness(live: dict) -> None:
    print(f"freshness at {live['rate']:.1f} deliveries/s ({live['deliveries']} deliveries): "
          f"202 -> warehouse p50 {live['warehouse_p50'] * 1000:.0f} ms, p99 {live['warehouse_p99'] * 1000:.0f} ms; "
          f"202 -> Salesforce p50 {live['salesforce_p50'] * 1000:.0f} ms, p99 {live['salesforce_p99'] * 1000:.0f} ms")
    goals = [("warehouse p99 < 1 s", live["warehouse_p99"] < 1), ("Salesforce p99 < 5 s", live["salesforce_p99"] < 5)]
    print("goals: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))


if __name__ == "__main__":
    main()
