"""Backfill benchmark: `partnero-sync backfill` loading N objects from the Partnero stand-in into
PostgreSQL, with CRM sync off, then on (Salesforce stand-in at 50 ms a call), against a naive
backfill measured in the same run.

    .venv/bin/python bench/backfill.py                            # 10,000 and 100,000 objects
    .venv/bin/python bench/backfill.py --sizes 10000 --naive-sample 2000
    .venv/bin/python bench/backfill.py --profile /tmp/prof        # also one cProfile'd run per size
    .venv/bin/python bench/backfill.py --help

For each size N (``--sizes``):

0. The Partnero stand-in (tests/fakes/partnero.py, ``length_aware`` pagination so progress has
   totals) runs in a process of its own, holding N objects made from ``--seed``: 10 % partners,
   30 % customers, 60 % transactions (one reward each, 30 % two; 2 % refunded: ``deleted_at``
   set). Its own rate, every page listed by a bare ``requests`` loop (JSON parsed, nothing else
   done), is printed as a reference: the stand-in's share of each run's wall time.
1. CRM off: a fresh database, ``partnero-sync migrate``, Redis db 11 flushed, then
   ``partnero-sync backfill`` as a child process, timed from its start to its exit (interpreter
   start-up included); records/s = N / wall time. Its peak RSS is the kernel's high-water mark of
   the child's resident memory (``VmHWM`` in /proc/PID/status, read every 20 ms until it exits). Checked afterwards: the run is
   finished with 0 failed and N records; the warehouse holds every partner, customer and
   transaction (refunds marked), the ledger every reward, and every inbox row is processed.
2. Second run: the same command again over the same data (nothing changed upstream): records/s;
   checked: nothing applied, N unchanged, no new inbox row.
3. CRM on: a fresh database, the Salesforce stand-in (tests/fakes/salesforce.py, in this process)
   at ``--latency`` seconds a call, ``--workers`` ``partnero-sync worker`` processes (started
   first, they send the outbox); the clock runs from the backfill's start until, in one database
   snapshot, no Salesforce record or commission change waits; then every outbox record is
   checked field by field against the stand-in and the stand-in's record counts against N.
   Prints records/s to Salesforce-complete, the backfill's own time and rate, Salesforce calls,
   and the peak RSS of the backfill and of the workers (``VmHWM``, as above).

Then, once, on the largest size's stand-in, the naive baseline: in this process, the same pages
listed with the same client (``PartneroApi``), and each object stored and applied on its own: one
inbox row per delivery (stored already claimed), one ``Processor.process_batch([event])`` call,
i.e. one transaction per object, no comparison with what is held; database connections kept,
the same database (fresh), CRM off. A proportional sample (``--naive-sample``) of the objects:
the first pages of each list. The summary prints ours/naive.

Uses the PostgreSQL database partnero_backfill (dropped first and at the end), Redis db 11
(flushed), and free loopback ports. Exit status: 0 when every check holds, 3 when one does not,
2 when the benchmark itself failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.common import (  # noqa: E402
    BIN,
    PG_ADMIN,
    PeakRss,
    drop_database,
    fresh_database,
    salesforce_env,
    start_workers,
    stop_workers,
)
from sync.rules.listed import ENTITIES  # noqa: E402

DB_NAME = "partnero_backfill"
DB_URL = PG_ADMIN.rsplit("/", 1)[0] + f"/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/11"
PAGE = 250


class CheckFailed(Exception):
    """A check of the results did not hold (exit status 3)."""


# -- the upstream program ------------------------------------------------------------------------

def _stamp(base: datetime, seconds: int) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split(total: int) -> tuple[int, int, int]:
    """``total`` objects as this benchmark's program has them: 10 % partners, 30 % customers, the
    rest transactions."""
    n_partners = max(1, total // 10)
    n_customers = max(1, total * 3 // 10)
    return n_partners, n_customers, total - n_partners - n_customers


def program(counts: tuple[int, int, int], seed: int) -> dict[str, list[dict]]:
    """What Partnero lists: ``counts`` partners, customers and transactions, deterministic by ``seed``."""
    rng = random.Random(seed)
    base = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    n_partners, n_customers, n_transactions = counts
    partners = [{
        "id": f"ptn_{i}", "key": f"ref-{i}", "email": f"Partner{i}@Example.com",
        "name": rng.choice(["Maria", "Zoë", "李", "Ann", "Ola"]), "surname": rng.choice(["Lopez", "Doe", "", None]),
        "status": rng.choice(["active", "active", "active", "archived"]), "approved": True,
        "tags": [{"value": "blog"}] if i % 3 == 0 else [], "created_at": _stamp(base, i),
        "updated_at": _stamp(base, 86400 + i)} for i in range(n_partners)]
    customers = [{
        "key": f"cus_{i}", "partner": f"ptn_{rng.randrange(n_partners)}", "deleted": False, "name": f"Cu{i}",
        "surname": "Stomer", "email": f"customer{i}@example.com", "status": "active", "tags": [],
        "created_at": _stamp(base, 200000 + i), "updated_at": _stamp(base, 300000 + i), "deleted_at": None}
        for i in range(n_customers)]
    transactions = []
    for i in range(n_transactions):
        key = f"tx_{i}"
        customer = customers[rng.randrange(n_customers)]
        amount = round(rng.uniform(5, 900), 2)
        created = _stamp(base, 600000 + i)
        rewards = [{"key": key, "action": "sale", "status": rng.choice(["ok", "review_period", "review_period"]),
                    "customer": customer["key"], "partner": customer["partner"], "amount": round(amount * 0.3, 2),
                    "amount_units": "USD", "created_at": created, "deleted_at": None, "product_type_data": {}}]
        if rng.random() < 0.3:  # a second tier: another partner's reward for the same sale
            rewards.append({**rewards[0], "key": f"{key}-t2", "partner": f"ptn_{rng.randrange(n_partners)}",
                            "amount": round(amount * 0.05, 2)})
        refunded = rng.random() < 0.02
        transactions.append({
            "key": key, "action": "sale", "amount": amount, "amount_units": "USD", "partner": customer["partner"],
            "customer": customer["key"], "credit": False, "is_currency": True, "created_at": created,
            "deleted_at": _stamp(base, 900000 + i) if refunded else None, "rewards": rewards})
    return {"partners": partners, "customers": customers, "transactions": transactions}


def expected(objects: dict[str, list[dict]]) -> dict[str, int]:
    txs = objects["transactions"]
    return {"partners": len(objects["partners"]), "customers": len(objects["customers"]), "transactions": len(txs),
            "refunded": sum(1 for t in txs if t["deleted_at"]), "rewards": sum(len(t["rewards"]) for t in txs),
            "total": sum(len(v) for v in objects.values())}


# -- the Partnero stand-in, in a process of its own -----------------------------------------------

def _serve_standin(counts: tuple[int, int, int], seed: int, api_key: str, conn) -> None:
    """The child: build the objects, serve them, say where, and wait to be told to stop."""
    from tests.fakes.partnero import FakePartnero

    fake = FakePartnero(api_key=api_key, pagination="length_aware")
    for entity, objects in program(counts, seed).items():
        setattr(fake, entity, objects)
    fake.start()
    conn.send((fake.url, Path(fake.ca_bundle).read_text()))
    try:
        conn.recv()  # anything, or the parent gone (EOFError): stop
    except (EOFError, KeyboardInterrupt):
        pass
    fake.stop()


class StandIn:
    def __init__(self, counts: tuple[int, int, int], seed: int):
        self.api_key = "bench_" + os.urandom(16).hex()
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_serve_standin, args=(counts, seed, self.api_key, child_conn),
                                       daemon=True, name="partnero-standin")

    def start(self) -> StandIn:
        self.process.start()
        if not self.conn.poll(300):
            raise SystemExit("the Partnero stand-in did not start")
        self.url, self.ca_pem = self.conn.recv()
        return self

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.process.join(10)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5)


def standin_rate(stand: StandIn, ca_bundle: str) -> dict:
    """Every page of every list with a bare requests loop: the stand-in's own rate."""
    import requests

    session = requests.Session()
    headers = {"Authorization": f"Bearer {stand.api_key}", "Accept": "application/json"}
    records = 0
    started = time.monotonic()
    for entity in ENTITIES:
        page = 1
        while True:
            response = session.get(f"{stand.url}/{entity}", params={"limit": PAGE, "page": page}, headers=headers,
                                   verify=ca_bundle, timeout=30)
            response.raise_for_status()
            body = response.json()
            records += len(body["data"])
            if page >= body["meta"]["last_page"]:
                break
            page += 1
    seconds = time.monotonic() - started
    return {"records": records, "seconds": seconds, "rate": records / seconds}


# -- database, Redis, processes -------------------------------------------------------------------

def fresh(env: dict) -> None:
    """A fresh database with the schema, and Redis db 11 empty."""
    fresh_database(DB_NAME)
    redis.Redis.from_url(REDIS_URL).flushdb()
    subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)


def watched(process: subprocess.Popen) -> PeakRss:
    sampler = PeakRss([process.pid])
    sampler.start()
    return sampler


def run_backfill(env: dict, log_path: Path, profile: str | None = None) -> dict:
    """``partnero-sync backfill`` as a child process: wall seconds, exit status, peak RSS."""
    command = [str(BIN / "partnero-sync"), "backfill"]
    if profile:
        command = [sys.executable, "-m", "cProfile", "-o", profile, *command]
    with open(log_path, "w") as out:
        started = time.monotonic()
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        rss = watched(child)
        code = child.wait()
        seconds = time.monotonic() - started
        rss.join(1)
    if code != 0:
        tail = log_path.read_text()[-2000:]
        raise CheckFailed(f"partnero-sync backfill exited {code}:\n{tail}")
    return {"seconds": seconds, "rss_mb": rss.mb}


def latest_run(engine) -> dict:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM backfill_runs ORDER BY id DESC LIMIT 1")).mappings().one()
    return dict(row)


def check_warehouse(engine, want: dict[str, int]) -> dict[str, int]:
    """The warehouse, ledger and inbox hold every object: counts per table."""
    with engine.connect() as conn:
        def scalar(sql: str) -> int:
            return conn.execute(sa.text(sql)).scalar()
        got = {
            "partners": scalar("SELECT count(*) FROM partners"),
            "customers": scalar("SELECT count(*) FROM customers"),
            "transactions": scalar("SELECT count(*) FROM transactions"),
            "refunded": scalar("SELECT count(*) FROM transactions WHERE refunded"),
            "rewards": scalar("SELECT count(*) FROM (SELECT DISTINCT transaction_key, reward_ref "
                              "FROM commission_entries) r"),
            "inbox": scalar("SELECT count(*) FROM webhook_events"),
            "inbox_not_processed": scalar("SELECT count(*) FROM webhook_events WHERE status <> 'processed'"),
        }
    wrong = {k: (got[k], want[k]) for k in ("partners", "customers", "transactions", "refunded", "rewards")
             if got[k] != want[k]}
    if wrong or got["inbox_not_processed"]:
        raise CheckFailed(f"the warehouse does not hold every object (got, want): {wrong}; "
                          f"{got['inbox_not_processed']} inbox rows not processed")
    return got


def check_run(run: dict, total: int, applied: int | None = None) -> None:
    problems = []
    if run["status"] != "finished":
        problems.append(f"status {run['status']}")
    if run["failed"]:
        problems.append(f"{run['failed']} failed")
    if run["records"] != total:
        problems.append(f"{run['records']} records, not {total}")
    if applied is not None and run["applied"] != applied:
        problems.append(f"{run['applied']} applied, not {applied}")
    if problems:
        raise CheckFailed(f"backfill #{run['id']}: " + ", ".join(problems))


def in_run_seconds(run: dict) -> float:
    return (run["finished_at"] - run["started_at"]).total_seconds()


# -- the measurements -----------------------------------------------------------------------------

def measure_off(env: dict, want: dict, work: Path, label: str, profile: str | None = None) -> dict:
    from sync.store import db

    fresh(env)
    engine = db.engine_for(DB_URL)
    try:
        result = run_backfill(env, work / f"{label}.log", profile)
        run = latest_run(engine)
        check_run(run, want["total"])
        got = check_warehouse(engine, want)
        inbox = got["inbox"]
        first = {**result, "rate": want["total"] / result["seconds"], "in_run": in_run_seconds(run),
                 "applied": run["applied"], "inbox": inbox}
        if profile:
            return first
        second = run_backfill(env, work / f"{label}-second.log")
        run2 = latest_run(engine)
        check_run(run2, want["total"], applied=0)
        got2 = check_warehouse(engine, want)
        if got2["inbox"] != inbox or run2["unchanged"] != want["total"]:
            raise CheckFailed(f"second run: {got2['inbox'] - inbox} new inbox rows, "
                              f"{run2['unchanged']} unchanged of {want['total']}")
        first["second"] = {**second, "rate": want["total"] / second["seconds"], "in_run": in_run_seconds(run2)}
        return first
    finally:
        engine.dispose()


def measure_on(args, env: dict, fake, want: dict, work: Path, label: str) -> dict:
    from bench.drain import wait_for_workers
    from sync.store import db

    env = {**env, **salesforce_env(fake)}
    fake.reset()
    fake.clear_calls()
    if not fake.has_object("Partnero_Transaction__c"):
        fake.define_object("Partnero_Transaction__c")
    fake.latency = args.latency
    fresh(env)
    engine = db.engine_for(DB_URL)
    workers = start_workers(env, args.workers)
    samplers = [watched(w) for w in workers]
    try:
        wait_for_workers(redis.Redis.from_url(REDIS_URL), args.workers)
        started = time.monotonic()
        result = run_backfill(env, work / f"{label}.log")
        backfill_seconds = time.monotonic() - started
        _wait_salesforce_complete(engine, started + args.timeout, args.timeout)
        seconds = time.monotonic() - started
    finally:
        stop_workers(workers)
        worker_rss = [s.mb for s in samplers]
    try:
        run = latest_run(engine)
        counts = _check_on(engine, fake, run, want)
    finally:
        engine.dispose()
    calls = fake.count("collections") + fake.count("upsert")
    fake.latency = 0
    return {"seconds": seconds, "rate": want["total"] / seconds, "backfill_seconds": backfill_seconds,
            "backfill_rate": want["total"] / backfill_seconds, "in_run": in_run_seconds(run),
            "rss_mb": result["rss_mb"], "worker_rss_mb": max(worker_rss, default=0.0), "calls": calls,
            "per_call": sum(counts.values()) / max(calls, 1)}


def _wait_salesforce_complete(engine, deadline: float, timeout: float) -> None:
    """Wait until, in one snapshot, no delivery is pending and no Salesforce record or commission
    change waits; CheckFailed when that is not so by ``deadline`` (``timeout`` seconds after the start)."""
    from bench.drain import done

    while True:
        finished, pending, backlog = done(engine)
        if finished:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"Salesforce not complete after {timeout:.0f}s: {pending} deliveries, "
                              f"{backlog} records left")
        time.sleep(0.25)


def _check_on(engine, fake, run: dict, want: dict) -> dict[str, int]:
    """The checks after a CRM-on run: the run, the warehouse, every Salesforce record field by
    field, and the stand-in's record counts against the program; returns those counts."""
    from bench.drain import check_salesforce

    check_run(run, want["total"])
    check_warehouse(engine, want)
    check_salesforce(engine, fake)
    counts = {"Contact": len(fake.records("Contact")), "Account": len(fake.records("Account")),
              "Partnero_Transaction__c": len(fake.records("Partnero_Transaction__c"))}
    need = {"Contact": want["partners"], "Account": want["customers"],
            "Partnero_Transaction__c": want["transactions"]}
    if counts != need:
        raise CheckFailed(f"Salesforce holds {counts}, not {need}")
    return counts


def measure_naive(env: dict, stand: StandIn, want: dict, sample: int) -> dict:
    """Each listed object stored and applied on its own, in this process (connections kept)."""
    from sync.partnero.api import PartneroApi
    from sync.rules import listed
    from sync.services import Services
    from sync.settings import Settings
    from sync.store.inbox import Delivery, DeliveryStatus, StoredDelivery

    fresh(env)
    settings = Settings.from_env(env)
    services = Services.build(settings)
    api = PartneroApi(settings.partnero)
    share = min(1.0, sample / want["total"])
    quota = {e: max(1, round(want[e] * share)) for e in ENTITIES}
    objects = deliveries = 0
    try:
        started = time.monotonic()
        for entity in ENTITIES:
            mapping = services.mappings.for_list(entity)
            left = quota[entity]
            for page in api.pages(entity, limit=PAGE):
                for obj in page.objects[:left]:
                    item = listed.listed(mapping, entity, obj, page.observed_at, "backfill")
                    for event, body in item.bodies():
                        delivery = Delivery(body, event, DeliveryStatus.PENDING, item.object_id)
                        stored = services.inbox.store_many([delivery], claimed=True)[delivery.fingerprint]
                        row = StoredDelivery(stored.id, event, body, DeliveryStatus.PENDING, 1, services.clock(),
                                             delivery.fingerprint, delivery.entity_id)
                        result = services.processor.process_batch([row])
                        if result.failed:
                            raise CheckFailed(f"naive: a delivery failed: {next(iter(result.failed.values()))}")
                        deliveries += 1
                    objects += 1
                left -= min(left, len(page.objects))
                if not left:
                    break
        seconds = time.monotonic() - started
    finally:
        services.inbox.engine.dispose()
    return {"records": objects, "deliveries": deliveries, "seconds": seconds, "rate": objects / seconds}


# -- main -----------------------------------------------------------------------------------------

def main() -> int:
    args = _parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    from bench.drain import RELATIONSHIPS
    from tests.fakes.salesforce import FakeSalesforce

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    fake = FakeSalesforce(relationships=RELATIONSHIPS, max_calls=1000)
    fake.define_object("Partnero_Transaction__c")
    fake.start()
    results: dict = {"sizes": {}, "naive": None}
    try:
        for n, size in enumerate(sizes):
            with_naive = bool(args.naive_sample) and n == len(sizes) - 1
            figures, naive = _measure_size(args, size, fake, work, with_naive)
            if naive is not None:
                results["naive"] = naive
            results["sizes"][size] = figures
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        fake.stop()
        drop_database(DB_NAME)
        redis.Redis.from_url(REDIS_URL).flushdb()

    summary(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000",
                        help="comma-separated numbers of objects, one measurement each (default 10000,100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated objects (same seed, same objects)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per Salesforce call (default 0.05)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for CRM on (default 2)")
    parser.add_argument("--naive-sample", type=int, default=5000,
                        help="objects for the naive baseline (0: skip it; default 5,000)")
    parser.add_argument("--skip-crm", action="store_true", help="leave out the CRM-on measurement")
    parser.add_argument("--profile", metavar="DIR",
                        help="also one extra CRM-off run per size under cProfile (not timed), "
                             "written to DIR/backfill-N.prof")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="give up waiting for Salesforce after this many seconds (default 1800)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    return parser.parse_args()


def _measure_size(args, size: int, fake, work: Path, with_naive: bool) -> tuple[dict, dict | None]:
    """Every measurement of ``size`` objects, on a Partnero stand-in of their own (stopped after):
    the figures, and the naive baseline's when ``with_naive`` (else None)."""
    print(f"{size:,} objects: starting the Partnero stand-in (its own process)", flush=True)
    stand = StandIn(split(size), args.seed).start()
    try:
        bundle = work / f"ca-{size}.pem"  # both stand-ins' CAs: one REQUESTS_CA_BUNDLE trusts both
        bundle.write_text(Path(fake.ca_bundle).read_text() + stand.ca_pem)
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SALESFORCE_", "DATABASE_URL",
                                                                             "PARTNERO_"))},
               "DATABASE_URL": DB_URL, "REDIS_URL": REDIS_URL, "MAPPINGS_DIR": str(ROOT / "mappings"),
               "LOG_LEVEL": "WARNING", "PARTNERO_API_KEY": stand.api_key, "PARTNERO_API_URL": stand.url,
               "REQUESTS_CA_BUNDLE": str(bundle)}
        want = expected(program(split(size), args.seed))
        figures: dict = {"expected": want}
        figures["standin"] = ref = standin_rate(stand, str(bundle))
        print(f"  stand-in alone (bare requests loop): {ref['records']:,} records in {ref['seconds']:.1f}s, "
              f"{ref['rate']:,.0f}/s", flush=True)
        figures["off"] = _measure_crm_off(args, env, want, work, size)
        if not args.skip_crm:
            figures["on"] = on = measure_on(args, env, fake, want, work, f"on-{size}")
            print(f"  CRM on ({args.latency * 1000:.0f} ms a call, {args.workers} workers): Salesforce complete "
                  f"after {on['seconds']:.1f}s, {on['rate']:,.0f} records/s; the backfill itself "
                  f"{on['backfill_seconds']:.1f}s, {on['backfill_rate']:,.0f}/s; {on['calls']} calls "
                  f"({on['per_call']:.0f} records a call); RSS backfill {on['rss_mb']:.0f} MB, "
                  f"workers {on['worker_rss_mb']:.0f} MB; checked", flush=True)
        if not with_naive:
            return figures, None
        naive = measure_naive(env, stand, want, args.naive_sample)
        print(f"  naive ({naive['records']:,} objects, {naive['deliveries']:,} deliveries, one transaction "
              f"each): {naive['seconds']:.1f}s, {naive['rate']:,.0f} records/s", flush=True)
        return figures, {**naive, "size": size}
    finally:
        stand.stop()


def _measure_crm_off(args, env: dict, want: dict, work: Path, size: int) -> dict:
    """The CRM-off run and its second run, printed; with --profile, one more run under cProfile."""
    off = measure_off(env, want, work, f"off-{size}")
    print(f"  CRM off: {off['seconds']:.1f}s wall ({off['in_run']:.1f}s in the run), "
          f"{off['rate']:,.0f} records/s, peak RSS {off['rss_mb']:.0f} MB; {off['inbox']:,} inbox rows; "
          f"checked", flush=True)
    s2 = off["second"]
    print(f"  second run: {s2['seconds']:.1f}s wall ({s2['in_run']:.1f}s in the run), "
          f"{s2['rate']:,.0f} records/s, peak RSS {s2['rss_mb']:.0f} MB; nothing applied", flush=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        target = str(Path(args.profile) / f"backfill-{size}.prof")
        measure_off(env, want, work, f"profile-{size}", profile=target)
        print(f"  profile of a CRM-off run written to {target}", flush=True)
    return off


def summary(results: dict, args) -> None:
    naive = results["naive"]
    print()
    head = (f"{'objects':>9} {'stand-in/s':>11} {'off rec/s':>10} {'off RSS':>8} {'2nd rec/s':>10} "
            f"{'on SF-done/s':>13} {'on backfill/s':>14} {'SF calls':>9} {'on RSS bf/wk':>13} {'ours/naive':>11}")
    print(head)
    print("-" * len(head))
    for size, f in results["sizes"].items():
        off, on = f["off"], f.get("on")
        ratio = f"x{off['rate'] / naive['rate']:.1f}" if naive else "-"
        on_cols = (f"{on['rate']:>13,.0f} {on['backfill_rate']:>14,.0f} {on['calls']:>9} "
                   f"{on['rss_mb']:>6.0f}/{on['worker_rss_mb']:<3.0f}MB") if on else f"{'-':>13} {'-':>14} {'-':>9} {'-':>13}"
        print(f"{size:>9,} {f['standin']['rate']:>11,.0f} {off['rate']:>10,.0f} {off['rss_mb']:>6.0f}MB "
              f"{off['second']['rate']:>10,.0f} {on_cols} {ratio:>11}")
    if naive:
        print(f"naive baseline: {naive['records']:,} objects of the {naive['size']:,}-object program, "
              f"{naive['rate']:,.0f} records/s (one transaction per delivery, CRM off)")
    sizes = list(results["sizes"])
    if len(sizes) > 1:
        rss = [results["sizes"][s]["off"]["rss_mb"] for s in sizes]
        print("peak RSS, CRM off: " + ", ".join(f"{s:,}: {r:.0f} MB" for s, r in zip(sizes, rss))
              + f" (x{rss[-1] / rss[0]:.2f} for x{sizes[-1] / sizes[0]:.0f} the objects)")
    largest = results["sizes"][sizes[-1]]["off"]["rate"]
    print(f"goal: >= 2,000 records/s with CRM off at {sizes[-1]:,}: {'met' if largest >= 2000 else 'NOT met'} "
          f"({largest:,.0f}/s)")


if __name__ == "__main__":
    sys.exit(main())
