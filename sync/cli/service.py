"""Running the service: ``migrate``, ``worker``, ``sweep``, ``status`` and ``dev``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click

from sync.cli.base import DURATION, load_settings, main
from sync.settings import redact_url


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (the Procfile's release step).

    Run it on every deploy, and after a mapping gained a table or a column. Creates missing
    tables and adds columns that mappings gained. Never drops or converts a column: a column that
    left the mappings is kept (and reported), one whose type changed stops the migration with an
    explanation (exit status 2). Safe to run any number of times, also from several processes
    at once.
    """
    from sync.services import Services

    settings = load_settings()
    done = Services.build(settings).migrate()
    for line in done:
        click.echo(line)
    click.echo(f"schema of {redact_url(settings.database_url)} is up to date")


@main.command()
@click.option("--burst", is_flag=True, help="Stop once the queue is empty (for scripts and tests).")
@click.option(
    "--sweep-every",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds between sweeps for stored deliveries nobody is on the way to.",
)
def worker(burst: bool, sweep_every: int) -> None:
    """Run an RQ worker on the 'partnero', 'partnero-crm' and 'partnero-backfill' queues, with
    RQ's scheduler for delayed retries.

    The Procfile's worker process: run one or more wherever the service runs. It adds the
    columns mappings gained at start; woken, it claims pending deliveries, oldest first, and
    applies them while any are pending (several workers share a backlog); it sends the CRM
    outbox; and every --sweep-every seconds it wakes a worker for pending deliveries nobody is
    on the way to. On SIGTERM (a PaaS stopping the process) it finishes the batch in hand, then
    exits. Exit status 1 when Redis cannot be reached.
    """
    from sync.services import Services
    from sync.worker.process import run_worker

    run_worker(Services.build(load_settings()), burst=burst, sweep_every=sweep_every)


@main.command()
@click.option(
    "--older-than",
    default=60,
    show_default=True,
    type=click.IntRange(min=0),
    help="Only rows stored at least this many seconds ago.",
)
def sweep(older_than: int) -> None:
    """Wake a worker for stored deliveries still pending that nobody is on the way to (Redis was
    down when they arrived, a worker died holding them).

    The worker does this every minute by itself; run it by hand to hurry a backlog along after
    Redis lost its data. Deliveries a worker holds are left to it. Exit status 1 when the
    database or Redis cannot be reached.
    """
    from sync.pipeline.sweeper import sweep as run_sweep
    from sync.services import Services

    services = Services.build(load_settings())
    count = run_sweep(services.inbox, services.queue, timedelta(seconds=older_than))
    click.echo(f"{count} pending deliveries waited with nobody on the way; a worker was woken" if count
               else "nothing to sweep: every pending delivery is on its way")


#: ``status --help``'s list of the keys ``--json`` prints (every key is documented: tests/test_cli_ops.py).
STATUS_JSON_KEYS = """\b
--json prints these keys (times in ISO 8601, UTC; null when not known):
  taken_at, state ("ok", "attention" or "unknown": the exit status),
  stuck_after_seconds,
  inbox: {by_status: {pending, processed, ignored, failed},
          oldest_pending_at, oldest_pending_age_seconds, last_processed_at},
  queue: {queued, scheduled, failed, started, workers},
  salesforce (null while CRM sync is off): {by_object: {OBJECT: {pending,
          waiting, synced, failed}}, backlog, refused, last_synced_at,
          bulk_jobs: [{job_id, object, state, records, since}] (the Bulk
          API 2.0 jobs running)},
  ledger (null with several programs: see programs): {program_currency,
          program_currency_from ("PARTNERO_CURRENCY" or "most used"),
          by_currency: {CURRENCY: {transactions, partners}},
          other_currencies: {CURRENCY: partners}} (money only),
  backfill (null when none ran): {id, status ("queued", "running",
          "stopped", "failed", "finished", "abandoned"), entities, since,
          entity, next_page, last_page, records, applied, unchanged, skipped,
          failed, started_at, heartbeat_at, finished_at, last_error, job_id,
          program, live} (the latest of any program),
  notifications: {pending, sent, failed, failed_recently}: the mappings'
          notify messages by status; failed_recently: failed ones written
          in the last 24 hours (a concern while any),
  programs: {PROGRAM: {inbox, salesforce, ledger, backfill, notifications,
          attention}}:
          each program's own figures, keyed as above (salesforce without
          problem, api_usage, paused and org_check, which are every
          program's), in PARTNERO_PROGRAMS' order; one program: "default",
  unavailable: {database, redis: why it could not be read; absent when read},
  alerts: {enabled, format (ALERT_WEBHOOK_FORMAT; null when off), open,
          open_keys, failing (messages owed whose sending failed),
          failing_since, attempts, next_try_at, last_error, last_what,
          last_at, last_outcome} (the operator's alerts),
  attention: [one sentence per thing that needs a person]
"""


@main.command(epilog=STATUS_JSON_KEYS)
@click.option("--json", "as_json", is_flag=True,
              help="Print the snapshot as JSON instead of a table (its keys are listed below).")
@click.option(
    "--stuck-after",
    type=DURATION,
    metavar="DURATION",
    help="How long the oldest pending delivery may wait before the backlog counts as stuck, "
         "e.g. 5m, 1h (default: 15m).",
)
def status(as_json: bool, stuck_after: timedelta | None) -> None:
    """Show how the service is doing, from one snapshot of the database and Redis.

    The inbox by status, the oldest pending delivery and the last one processed; the queue
    (waiting jobs, scheduled retries, running and failed jobs, workers); with Salesforce on, the
    CRM backlog and refused records by object and the last record synced; the ledger's program
    currency (the one Salesforce gets commission totals in) and the partners earning in other
    currencies; the latest backfill; the alerts (on or off, those open, the last sent and its
    outcome, a failing endpoint); and what needs a person. With several programs
    (PARTNERO_PROGRAMS), a line per program, and each program's trouble under its name
    ("friends: 3 deliveries failed"). Use it by hand, or from a monitor by its exit status:

    \b
    0  healthy
    1  something needs attention: failed deliveries or jobs, a stuck backlog,
       records Salesforce refused, jobs waiting with no worker
    2  cannot tell: the database or Redis could not be read (or the
       configuration is wrong)
    """
    from sync.ops.snapshot import STUCK_AFTER, Health, take
    from sync.ops.status import render
    from sync.services import Services

    services = Services.build(load_settings())
    snapshot = take(services, stuck_after or STUCK_AFTER, with_ledger=True)
    if as_json:
        click.echo(json.dumps(snapshot.as_dict(), indent=2))
    else:
        click.echo(render(snapshot, services.settings.salesforce.describe()))
    sys.exit({Health.OK: 0, Health.ATTENTION: 1, Health.UNKNOWN: 2}[snapshot.state])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the receiver listens.")
@click.option("--port", default=5000, show_default=True, type=int, help="The receiver's port.")
def dev(host: str, port: int) -> None:
    """Run web and worker together on this machine, on the embedded defaults.

    For trying partnero-sync out and developing it, never for production. Creates the schema,
    then serves the receiver and runs a worker until Ctrl-C. Without PARTNERO_WEBHOOK_SECRET a
    development secret is used and printed. Where no Redis answers at REDIS_URL, an in-process
    stand-in is used (one process, nothing kept on exit). Exit status 1 when the database
    cannot be reached.
    """
    from sync.local import run_dev

    run_dev(load_settings(), host=host, port=port)
