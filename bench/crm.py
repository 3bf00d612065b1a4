"""Salesforce at scale: a large backfill with CRM sync on, sent by sObject Collections only and with
Bulk API 2.0 jobs, measured in the same run; then the API budget pausing a flush and resuming it.

    .venv/bin/python bench/crm.py                                  # 100,000 partners, customers, transactions
    .venv/bin/python bench/crm.py --each 10000                     # 10,000 of each
    .venv/bin/python bench/crm.py --modes bulk --flat 0.1          # bulk only, and a tenth-size run for memory
    .venv/bin/python bench/crm.py --skip-budget                    # leave out the budget run
    .venv/bin/python bench/crm.py --help

For each mode (``--modes``, default ``collections,bulk``):

1. The Partnero stand-in (tests/fakes/partnero.py, in its own process, as in bench/backfill.py)
   lists ``--each`` partners, ``--each`` customers and ``--each`` transactions.
2. A Salesforce stand-in of its own (tests/fakes/salesforce.py, in this process), set up as an
   admin sets an org up for the shipped mappings (tests/salesforce_orgs.py), answering each call
   after ``--latency`` seconds; it counts every API call against the org's daily allowance, as
   Salesforce does.
3. A fresh PostgreSQL database, ``--workers`` ``partnero-sync worker`` processes, then
   ``partnero-sync backfill`` as a child process. The clock runs from the backfill's start until,
   in one database snapshot, no delivery is pending and no Salesforce record or commission change
   waits; then every outbox record is checked field by field against the stand-in, and the
   stand-in's record counts against the program.
   ``collections``: ``SALESFORCE_BULK_THRESHOLD=off`` (200 records a call, as before Bulk API 2.0);
   ``bulk``: the default threshold.
4. Printed per mode: the API calls the org counted (and by kind), the time until Salesforce holds
   every record, records per API call, the peak RSS of the backfill and of the workers
   (``VmHWM``, bench/common.py). With ``--flat F``, the bulk mode runs once more at F times the
   size: its workers' peak RSS beside the full run's says whether memory stays flat.

Then the budget (``--skip-budget`` leaves it out): a smaller backfill (``--budget-each`` of each
kind), Collections only so that it needs many calls, against an org whose allowance is small and
already partly used by "other integrations" (``--budget-allowance``, ``--budget-others``), with
``SALESFORCE_API_BUDGET`` set so that the flush reaches it half-way. Once the flush has paused (the
outbox waits, ``partnero-sync status --json`` says paused), the benchmark lets the org's rolling
usage fall (the other integrations' calls age out of the 24 hours) and waits for the flush to
resume by itself and finish. Printed: a timeline of usage, backlog and the paused state.

Uses the PostgreSQL database partnero_crm (dropped first and at the end), Redis db 10 (flushed),
free loopback ports. Exit status: 0 when every check holds, 3 when one does not, 2 when the
benchmark itself failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import backfill as bf  # noqa: E402
from bench.common import BIN, drop_database, salesforce_env, start_workers, stop_workers  # noqa: E402

#: The API calls the org counts, by the stand-in's kind of call.
KINDS = ("collections", "upsert", "delete", "describe", "query", "limits", "bulk_create", "bulk_upload",
         "bulk_close", "bulk_status", "bulk_results", "bulk_abort", "bulk_list", "bulk_delete", "rest")
THRESHOLD = {"collections": "0", "bulk": ""}  # SALESFORCE_BULK_THRESHOLD: 0 never, "" the default


def salesforce_org(api_max: int):
    """A Salesforce stand-in set up for the shipped mappings, as an admin sets an org up."""
    from bench.drain import RELATIONSHIPS
    from tests.fakes.salesforce import FakeSalesforce
    from tests.salesforce_orgs import set_up

    fake = FakeSalesforce(relationships=RELATIONSHIPS, max_calls=1000, api_max=api_max)
    set_up(fake)
    return fake.start()


def api_used(fake) -> int:
    return fake.api_max - fake.api_remaining


def by_kind(fake) -> dict[str, int]:
    return {kind: n for kind in KINDS if (n := fake.count(kind))}


class Program:
    """The Partnero stand-in (its own process) with ``each`` partners, customers and transactions,
    and the environment every child process gets."""

    def __init__(self, each: int, seed: int, work: Path):
        self.counts = (each, each, each)
        self.want = bf.expected(bf.program(self.counts, seed))
        self.stand = bf.StandIn(self.counts, seed).start()
        self.work = work

    def env(self, fake) -> dict:
        bundle = self.work / f"ca-{fake.port}.pem"  # both stand-ins' CAs
        bundle.write_text(Path(fake.ca_bundle).read_text() + self.stand.ca_pem)
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("SALESFORCE_", "DATABASE_URL", "PARTNERO_"))}
        return {**keep, "DATABASE_URL": bf.DB_URL, "REDIS_URL": bf.REDIS_URL,
                "MAPPINGS_DIR": str(ROOT / "mappings"), "LOG_LEVEL": "WARNING", "PARTNERO_API_KEY": self.stand.api_key,
                "PARTNERO_API_URL": self.stand.url, "REQUESTS_CA_BUNDLE": str(bundle)}

    def stop(self) -> None:
        self.stand.stop()


def measure_mode(args, program: Program, mode: str) -> dict:
    """One backfill with CRM on, sent the ``mode`` way, on a Salesforce stand-in of its own."""
    fake = salesforce_org(api_max=10_000_000)
    try:
        env = {**program.env(fake), "SALESFORCE_BULK_THRESHOLD": THRESHOLD[mode]}
        figures = bf.measure_on(args, env, fake, program.want, program.work, f"{mode}-{program.counts[0]}")
        figures.update(api_calls=api_used(fake), kinds=by_kind(fake), jobs=len(fake.bulk.jobs()))
    finally:
        fake.stop()
    records = sum(program.counts)
    print(f"  {mode:<11}: Salesforce holds all {records:,} records after {figures['seconds']:.1f}s "
          f"(the backfill itself {figures['backfill_seconds']:.1f}s); {figures['api_calls']:,} API calls "
          f"({records / max(figures['api_calls'], 1):,.0f} records a call; {figures['jobs']} bulk jobs); "
          f"peak RSS backfill {figures['rss_mb']:.0f} MB, workers {figures['worker_rss_mb']:.0f} MB; checked",
          flush=True)
    print(f"               calls by kind: {json.dumps(figures['kinds'])}", flush=True)
    return figures


# -- the budget -----------------------------------------------------------------------------------

def status_json(env: dict) -> dict:
    """What ``partnero-sync status --json`` says about Salesforce."""
    out = subprocess.run([str(BIN / "partnero-sync"), "status", "--json"], env=env, capture_output=True, text=True,
                         timeout=60)
    return json.loads(out.stdout).get("salesforce") or {}


class Timeline:
    """Lines of (seconds since start, the org's usage, the outbox backlog, paused?), printed as they come."""

    def __init__(self, fake, engine, env: dict, started: float):
        self.fake, self.engine, self.env, self.started = fake, engine, env, started
        self.rows: list[dict] = []

    def look(self, note: str = "") -> dict:
        from bench.drain import done

        crm = status_json(self.env)
        finished, pending, backlog = done(self.engine)
        row = {"t": time.monotonic() - self.started, "used": api_used(self.fake), "backlog": backlog,
               "pending_deliveries": pending, "paused": crm.get("paused") is not None, "finished": finished,
               "note": note}
        self.rows.append(row)
        print(f"  {row['t']:>6.1f}s  org usage {row['used']:>5,} of {self.fake.api_max:,}  outbox backlog "
              f"{backlog:>6,}  {'PAUSED' if row['paused'] else 'flowing':<7}  {note}", flush=True)
        return row

    def until(self, condition, timeout: float, every: float, note: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = self.look(note)
            if condition(row):
                return row
            if time.monotonic() > deadline:
                raise bf.CheckFailed(f"timed out after {timeout:.0f}s waiting: {note}")
            time.sleep(every)


def measure_budget(args, program: Program) -> dict:
    """A Collections-only backfill against an org whose allowance others use too: the flush pauses at
    SALESFORCE_API_BUDGET, the records wait, the others' calls age out, the flush resumes by itself."""
    from bench.drain import check_salesforce, wait_for_workers
    from sync.store import db

    allowance, others = args.budget_allowance, args.budget_others
    ours = args.budget_ours or max(10, 3 * program.counts[0] // 400)  # about half what Collections need
    budget = others + ours
    fake = salesforce_org(api_max=allowance)
    fake.latency = args.latency
    fake.api_remaining = allowance - others
    env = {**program.env(fake), **salesforce_env(fake), "SALESFORCE_BULK_THRESHOLD": "0",
           "SALESFORCE_API_BUDGET": str(budget)}
    print(f"  org: {allowance:,} calls a day, {others:,} used by other integrations; SALESFORCE_API_BUDGET={budget:,} "
          f"(this service may use about {ours:,})", flush=True)
    bf.fresh(env)
    engine = db.engine_for(bf.DB_URL)
    workers = start_workers(env, args.workers)
    try:
        wait_for_workers(redis.Redis.from_url(bf.REDIS_URL), args.workers)
        started = time.monotonic()
        timeline = Timeline(fake, engine, env, started)
        bf.run_backfill(env, program.work / "budget.log")
        paused = timeline.until(lambda r: r["paused"] or r["finished"], 600, 2, "the backfill is done; waiting for the pause")
        if not paused["paused"]:
            raise bf.CheckFailed("Salesforce got every record before the flush reached the budget: "
                                 "raise --budget-each or lower --budget-ours")
        calls_at_pause = paused["used"]
        held = timeline.until(lambda r: r["t"] > paused["t"] + 20, 60, 5, "paused: the records wait")
        if held["used"] != calls_at_pause or not held["backlog"]:
            raise bf.CheckFailed(f"paused, yet calls went on ({calls_at_pause} -> {held['used']}) or nothing waits")
        fake.api_remaining = allowance - (held["used"] - others)  # the others' calls age out of the 24 hours
        timeline.look(f"the other integrations' {others:,} calls age out of the org's 24 hours")
        resumed = timeline.until(lambda r: not r["paused"], 420, 10, "waiting for the probe (GET limits)")
        done_row = timeline.until(lambda r: r["finished"], 600, 2, "resumed: sending")
        check_salesforce(engine, fake)
    finally:
        stop_workers(workers)
        engine.dispose()
        fake.stop()
    return {"allowance": allowance, "others": others, "budget": budget, "calls_at_pause": calls_at_pause,
            "paused_at": paused["t"], "resumed_at": resumed["t"], "finished_at": done_row["t"],
            "calls_in_all": done_row["used"], "timeline": timeline.rows}  # the others' aged out


# -- main -----------------------------------------------------------------------------------------

def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-crm-"))
    results: dict = {"each": args.each, "modes": {}}
    try:
        modes = [m for m in args.modes.split(",") if m]
        if modes:
            results["modes"] = measure_modes(args, modes, work)
        if args.flat:
            results["flat"] = measure_flat(args, work)
        if not args.skip_budget:
            print(f"budget: {args.budget_each:,} of each, Collections only", flush=True)
            small = Program(args.budget_each, args.seed, work)
            try:
                results["budget"] = measure_budget(args, small)
            finally:
                small.stop()
    except bf.CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        drop_database(bf.DB_NAME)
        redis.Redis.from_url(bf.REDIS_URL).flushdb()
    summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def measure_modes(args, modes: list[str], work: Path) -> dict:
    program = Program(args.each, args.seed, work)
    try:
        print(f"{args.each:,} partners, {args.each:,} customers, {args.each:,} transactions; "
              f"{args.latency * 1000:.0f} ms a Salesforce call; {args.workers} workers", flush=True)
        return {mode: measure_mode(args, program, mode) for mode in modes}
    finally:
        program.stop()


def measure_flat(args, work: Path) -> dict:
    """Bulk at ``--flat`` times the size: its workers' peak RSS beside the full run's."""
    each = max(1, int(args.each * args.flat))
    print(f"memory: bulk at {each:,} of each", flush=True)
    program = Program(each, args.seed, work)
    try:
        return {"each": each, **measure_mode(args, program, "bulk")}
    finally:
        program.stop()


def summary(results: dict) -> None:
    modes, records = results["modes"], 3 * results["each"]
    print()
    if modes:
        head = f"{'mode':<12} {'API calls':>10} {'rec/call':>9} {'SF complete':>12} {'backfill':>9} {'RSS bf/wk':>12}"
        print(head)
        print("-" * len(head))
        for mode, f in modes.items():
            print(f"{mode:<12} {f['api_calls']:>10,} {records / max(f['api_calls'], 1):>9,.0f} {f['seconds']:>11.1f}s "
                  f"{f['backfill_seconds']:>8.1f}s {f['rss_mb']:>5.0f}/{f['worker_rss_mb']:<4.0f}MB")
    if "collections" in modes and "bulk" in modes:
        c, b = modes["collections"], modes["bulk"]
        print(f"bulk / collections: API calls x{b['api_calls'] / c['api_calls']:.3f}, time to Salesforce complete "
              f"x{b['seconds'] / c['seconds']:.2f}, workers' peak RSS x{b['worker_rss_mb'] / c['worker_rss_mb']:.2f}")
    if "bulk" in modes:
        calls = modes["bulk"]["api_calls"]
        print(f"goal: fewer than 100 API calls for {records:,} records: {'met' if calls < 100 else 'NOT met'} ({calls})")
    flat = results.get("flat")
    if flat and "bulk" in modes:
        full = modes["bulk"]["worker_rss_mb"]
        print(f"memory: workers' peak RSS {flat['worker_rss_mb']:.0f} MB at {3 * flat['each']:,} records, {full:.0f} MB "
              f"at {records:,} (x{full / flat['worker_rss_mb']:.2f} for x{results['each'] / flat['each']:.0f} the records)")
    budget = results.get("budget")
    if budget:
        print(f"budget: paused at {budget['calls_at_pause'] - budget['others']:,} calls of ours "
              f"({budget['calls_at_pause']:,} of {budget['allowance']:,} in the org, budget {budget['budget']:,}) "
              f"{budget['paused_at']:.0f}s after the start; resumed by itself at {budget['resumed_at']:.0f}s; "
              f"Salesforce complete at {budget['finished_at']:.0f}s, {budget['calls_in_all']:,} calls of ours in all")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--each", type=int, default=100_000,
                        help="partners, and as many customers and transactions (default 100,000)")
    parser.add_argument("--modes", default="collections,bulk", help="collections, bulk, both, or none (an empty list: the budget run only)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated objects")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per Salesforce call (default 0.05)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="give up waiting for Salesforce after this many seconds (default 1800)")
    parser.add_argument("--flat", type=float, default=0.1,
                        help="also run bulk at this share of the size, for memory (0: skip; default 0.1)")
    parser.add_argument("--skip-budget", action="store_true", help="leave out the budget run")
    parser.add_argument("--budget-each", type=int, default=5000, help="objects of each kind in the budget run")
    parser.add_argument("--budget-allowance", type=int, default=1000, help="the org's daily calls in the budget run")
    parser.add_argument("--budget-others", type=int, default=600, help="calls other integrations used already")
    parser.add_argument("--budget-ours", type=int, default=0,
                        help="SALESFORCE_API_BUDGET is the others' calls plus this many (default: about half "
                             "the calls Collections need)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
