"""The ``partnero-sync`` command."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from sync import logs
from sync.errors import ConfigurationError, SyncError, caused_by
from sync.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: Where ``_settings`` leaves the settings, so an error line can name the database or Redis.
_SETTINGS = "partnero_sync.settings"


class _Group(click.Group):
    """Turns the failures an operator can expect into one clear line, never a traceback:
    configuration problems exit 2; a database or Redis that cannot be reached, a missing schema
    and the refusals partnero-sync raises on purpose exit 1. Anything else is a bug and keeps
    its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"partnero-sync: configuration error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            message = explain(exc, ctx.meta.get(_SETTINGS))
            if message is None:
                raise
            click.echo(f"partnero-sync: {message}", err=True)
            sys.exit(1)


def explain(exc: BaseException, settings: Settings | None = None) -> str | None:
    """One line for an expected failure (the database or Redis away, the schema missing, an error
    partnero-sync raised on purpose); None for anything else. Never shows a statement's
    parameters or a password."""
    import redis

    from sync import db

    message = db.explain(exc)
    if message is not None:
        return message + (f" (DATABASE_URL {redact_url(settings.database_url)})" if settings else "")
    unreachable = caused_by(exc, redis.RedisError)
    if unreachable is not None:
        message = str(exc) if isinstance(exc, SyncError) else f"Redis unavailable: {db.describe_error(unreachable)}"
        return message + (f" (REDIS_URL {redact_url(settings.redis_url)})" if settings else "")
    if isinstance(exc, SyncError):
        return str(exc)
    return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """partnero-sync: Partnero webhooks into Salesforce and a SQL warehouse.

    Configured from the environment: PARTNERO_WEBHOOK_SECRET, DATABASE_URL (default
    sqlite:///partnero-sync.db), REDIS_URL (default redis://localhost:6379/0), MAPPINGS_DIR
    (default mappings), LOG_LEVEL (default INFO), SALESFORCE_* for the CRM sync (none set: only
    the warehouse is synced), and PARTNERO_API_KEY (with PARTNERO_API_URL) for the commands that
    call Partnero's REST API (backfill, reconcile, webhooks). README.md explains each.

    Exit status: 0 done; 1 the command failed (the database or Redis could not be reached, the
    schema is missing, or what the command reports); 2 bad arguments or configuration. `status`
    has its own: 0 healthy, 1 needs attention, 2 cannot tell.
    """


def _settings() -> Settings:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    click.get_current_context().meta[_SETTINGS] = settings
    return settings


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """A span of time written as a whole number and a unit: 45s, 30m, 12h, 90d, 2w."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text.lower())
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 90d or 2w (units: s, m, h, d, w)")
    return timedelta(seconds=int(found[1]) * _UNITS[found[2]])


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx) -> timedelta:
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
_DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(when: datetime | None) -> datetime | None:
    """A date given on the command line, read as UTC."""
    return when.replace(tzinfo=timezone.utc) if when else None


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

    settings = _settings()
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
    """Run an RQ worker on the 'partnero' and 'partnero-crm' queues, with RQ's scheduler for
    delayed retries.

    The Procfile's worker process: run one or more wherever the service runs. It adds the
    columns mappings gained at start; woken, it claims pending deliveries, oldest first, and
    applies them while any are pending (several workers share a backlog); it sends the CRM
    outbox; and every --sweep-every seconds it wakes a worker for pending deliveries nobody is
    on the way to. On SIGTERM (a PaaS stopping the process) it finishes the batch in hand, then
    exits. Exit status 1 when Redis cannot be reached.
    """
    from sync.worker import run_worker

    run_worker(_settings(), burst=burst, sweep_every=sweep_every)


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
    from sync.services import Services
    from sync.sweeper import sweep as run_sweep

    services = Services.build(_settings())
    count = run_sweep(services.inbox, services.jobs, timedelta(seconds=older_than))
    click.echo(f"{count} pending deliveries waited with nobody on the way; a worker was woken" if count
               else "nothing to sweep: every pending delivery is on its way")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON instead of a table (its keys are listed above).")
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
    currencies; the latest backfill; and what needs a person. Use it by hand, or from a monitor by its exit status:

    \b
    0  healthy
    1  something needs attention: failed deliveries or jobs, a stuck backlog,
       records Salesforce refused, jobs waiting with no worker
    2  cannot tell: the database or Redis could not be read (or the
       configuration is wrong)

    \b
    --json prints these keys (times in ISO 8601, UTC; null when not known):
      taken_at, state ("ok", "attention" or "unknown": the exit status),
      stuck_after_seconds,
      inbox: {by_status: {pending, processed, ignored, failed},
              oldest_pending_at, oldest_pending_age_seconds, last_processed_at},
      queue: {queued, scheduled, failed, started, workers},
      salesforce (null while CRM sync is off): {by_object: {OBJECT: {pending,
              waiting, synced, failed}}, backlog, refused, last_synced_at},
      ledger: {program_currency, program_currency_from ("PARTNERO_CURRENCY"
              or "most used"), by_currency: {CURRENCY: {transactions, partners}},
              other_currencies: {CURRENCY: partners}} (money only),
      backfill (null when none ran): {id, status ("queued", "running",
              "stopped", "failed", "finished", "abandoned"), entities, since,
              entity, next_page, last_page, records, applied, unchanged, skipped,
              failed, started_at, heartbeat_at, finished_at, last_error, job_id,
              live},
      unavailable: {database, redis: why it could not be read; absent when read},
      attention: [one sentence per thing that needs a person]
    """
    from sync import stats
    from sync.services import Services
    from sync.status import render

    services = Services.build(_settings())
    snapshot = stats.take(services, stuck_after or stats.STUCK_AFTER, with_ledger=True)
    if as_json:
        click.echo(json.dumps(snapshot.as_dict(), indent=2))
    else:
        click.echo(render(snapshot, services.settings.salesforce.describe()))
    sys.exit({stats.OK: 0, stats.ATTENTION: 1, stats.UNKNOWN: 2}[snapshot.state])


@main.command("requeue-failed")
@click.option("--since", type=_DATE, help="Only deliveries received from this date (UTC) on.")
@click.option("--event", "event_type", metavar="TYPE", help="Only deliveries of this event type.")
@click.option("--dry-run", is_flag=True, help="Only say what would be retried and skipped; change nothing.")
def requeue_failed(since: datetime | None, event_type: str | None, dry_run: bool) -> None:
    """Retry failed deliveries, after fixing what failed them (a mapping, the warehouse, a bug).

    Sets the matching failed deliveries back to pending, 1,000 at a time, and wakes a worker to
    apply them. Their attempts count afresh, and their last error stays until a retry succeeds.
    A delivery the current mapping files still cannot apply is skipped and listed with the
    reason (its last error is updated), and the others go on.

    If Redis cannot take the wake-up, the deliveries are set back to pending all the same: the
    worker's sweeper wakes one once Redis answers. It says so, since nothing more is needed.
    Exit status 1 when some deliveries still cannot be applied, or the database cannot be read
    or written.
    """
    from sync.requeue import dry_run as preview
    from sync.requeue import requeue_failed as run_requeue
    from sync.services import Services

    services = Services.build(_settings())
    check = services.processor.check
    if dry_run:
        count, skipped = preview(services.inbox, check, since=_utc(since), event_type=event_type)
        click.echo(f"would requeue {count} failed deliveries (dry run: nothing changed)")
    else:
        result = run_requeue(services.inbox, services.jobs, since=_utc(since), event_type=event_type,
                             still_failing=check)
        click.echo(f"requeued {result.requeued} failed deliveries" + (", a worker woken" if result.enqueued else ""))
        if result.redis_error is not None:
            click.echo(
                f"Redis could not take the wake-up ({result.redis_error}): the deliveries are pending, and the "
                "worker's sweeper will wake a worker once Redis answers",
                err=True,
            )
        skipped = result.skipped
    _list_failures(skipped, "still cannot be applied, left failed" if not dry_run else "would be skipped: they still "
                   "cannot be applied")


def _list_failures(failures: list[tuple[int, str]], what: str) -> None:
    """Deliveries that failed or would, on stderr, the first 20 with their reason; exit 1 if any."""
    if not failures:
        return
    click.echo(f"{len(failures)} {what}:", err=True)
    for event_id, reason in failures[:20]:
        click.echo(f"  inbox #{event_id}: {reason}", err=True)
    if len(failures) > 20:
        click.echo(f"  … and {len(failures) - 20} more (partnero-sync status, /ops?status=failed)", err=True)
    sys.exit(1)


@main.command()
@click.option("--older-than", type=DURATION, required=True, metavar="DURATION",
              help="Prune deliveries received longer ago than this, e.g. 90d, 2w, 12h, 30m.")
@click.option("--dry-run", is_flag=True, help="Only say how many would be pruned; change nothing.")
def prune(older_than: timedelta, dry_run: bool) -> None:
    """Drop the raw bodies of old deliveries that are done with, to keep the database small.

    Only processed and ignored deliveries received longer ago than --older-than lose their
    body; pending and failed ones keep it. Each row stays, with its status and fingerprint, so
    Partnero sending the same delivery again is still answered "duplicate"; `replay` skips
    pruned deliveries (and says how many). Works 1,000 rows a transaction; running it again, or
    several at once (a scheduler that overlaps), is harmless. Meant for a daily scheduler, e.g.
    `partnero-sync prune --older-than 90d`. Exit status 1 when the database cannot be reached.
    """
    from sync.inbox import Pruned, utcnow
    from sync.progress import progressbar
    from sync.services import Services

    services = Services.build(_settings())
    before = utcnow() - older_than
    when = f"received before {before:%Y-%m-%d %H:%M:%S} UTC"
    due = services.inbox.prunable(before)
    if dry_run:
        click.echo(f"would prune {due.rows} deliveries ({_size(due.bytes)}) {when} (dry run: nothing changed)")
        return
    total = Pruned()
    with progressbar(due.rows, "pruning") as bar:
        for batch in services.inbox.prune(before):
            total += batch
            bar.update(batch.rows)
    click.echo(f"pruned {total.rows} deliveries ({_size(total.bytes)}) {when}")


def _size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


@main.command("crm-errors")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="List at most this many.")
def crm_errors(limit: int) -> None:
    """List the records Salesforce refused (failed) or that wait for their parent (waiting),
    newest first, with Salesforce's error code and message.

    Use it when `status` reports refused records: fix the cause in Salesforce or in a mapping,
    then run `crm-retry`. Exit status 1 when the database cannot be reached.
    """
    from sync.crm.outbox import Outbox
    from sync.services import Services

    services = Services.build(_settings())
    with services.inbox.engine.connect() as conn:
        errors = Outbox().errors(conn, limit)
    if not errors:
        click.echo("no Salesforce errors")
        return
    for e in errors:
        when = e["error_at"].strftime("%Y-%m-%d %H:%M:%S") if e["error_at"] else "-"
        click.echo(f"{when}  {e['status']:<7}  {e['object']} {e['external_id']}: {e['error_code']}: {e['error_message']}")


@main.command("crm-retry")
@click.option("--object", "object_name", metavar="SOBJECT", help="Only records of this Salesforce object.")
def crm_retry(object_name: str | None) -> None:
    """Send refused and waiting records again (after fixing the cause in Salesforce or a mapping).

    Makes them due now and asks the workers for a flush. Records refused because the mapping
    could not compute a field (MAPPING_ERROR in `crm-errors`) are not sent: after fixing the
    mapping, `replay` their deliveries. Exit status 2 while Salesforce sync is off; 1 when the
    database or Redis cannot be reached.
    """
    from sync.crm.outbox import Outbox
    from sync.services import Services

    services = Services.build(_settings())
    if not services.settings.salesforce.enabled:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    with services.inbox.engine.begin() as conn:
        count = Outbox().retry_failed(conn, object_name)
        uncomputed = Outbox().refused_by_mapping(conn, object_name)
    services.flushes.forget_problem()
    services.flushes.request(force=True)
    click.echo(f"{count} records will be sent again")
    if uncomputed:
        click.echo(f"{uncomputed} records the mapping could not compute (MAPPING_ERROR) are not: fix the "
                   "mapping, then `partnero-sync replay` their deliveries")


@main.command("crm-flush")
def crm_flush() -> None:
    """Send what waits in the CRM outbox to Salesforce now, in this process, with progress.

    The workers flush by themselves; use this to watch a flush, or to drain a backlog without a
    worker. Exit status 2 while Salesforce sync is off or its login is refused; 1 when the
    database or Salesforce cannot be reached.
    """
    from sync.services import Services

    services = Services.build(_settings())
    if services.flusher() is None:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    report = services.flushes.run_foreground(on_progress=lambda r: click.echo(f"  {r.summary()}", err=True))
    click.echo(report.summary())
    if report.org_refusal is not None:
        raise SyncError(report.org_refusal.message)


@main.command("ledger")
@click.argument("partner_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print the entries and totals as JSON (amounts as exact decimal text).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="Show the newest this many entries (0: all). The totals always count every entry.")
def ledger_command(partner_id: str, as_json: bool, limit: int) -> None:
    """Show one partner's commission: their ledger entries and totals per currency.

    What to check before paying a partner. Each entry is a reward booked (commission), moved by a
    newer state of its transaction (adjustment: its amount, status, partner or currency changed)
    or by a refund (reversal), with exact amounts; entries are only ever added. The totals, per
    currency: approved (status ok), pending (review_period, or any other status), rejected,
    reversed (refunded), and owed = approved + pending. Currencies are never added together, and
    points or credits (not money) are listed apart. Salesforce gets the totals of the program
    currency (PARTNERO_CURRENCY, else the one most used).

    Exit status 0; 1 when the ledger has no entry for PARTNER_ID, or the database cannot be
    reached.
    """
    from sync import statement
    from sync.services import Services

    settings = _settings()
    services = Services.build(settings)
    found = statement.take(services.inbox.engine, partner_id, settings.currency, limit or None)
    if found is None:
        raise SyncError(f"no ledger entries for partner {partner_id!r}")
    click.echo(json.dumps(found.as_dict(), indent=2) if as_json else statement.render(found))


class _Entities(click.ParamType):
    """A comma-separated choice of Partnero's lists: partners, customers, transactions."""

    name = "LISTS"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        from sync.partnero.listed import ENTITIES

        if isinstance(value, tuple):
            return value
        chosen = {part.strip().lower() for part in str(value).split(",") if part.strip()}
        unknown = sorted(chosen - set(ENTITIES))
        if unknown or not chosen:
            self.fail(f"{', '.join(unknown) or 'nothing'}: choose among {', '.join(ENTITIES)}", param, ctx)
        return tuple(e for e in ENTITIES if e in chosen)


ENTITY_LISTS = _Entities()


def _partnero_api(settings: Settings):
    from sync.partnero.api import PartneroApi

    settings.partnero.require_key()
    return PartneroApi(settings.partnero)


@main.command()
@click.option("--entities", type=ENTITY_LISTS, default="partners,customers,transactions", show_default=True,
              help="Which of Partnero's lists to load (comma-separated); they are read parents first.")
@click.option("--since", type=_DATE, help="Only objects created, updated or deleted from this date (UTC) on. "
              "Partnero's lists are still read whole: the others are skipped.")
@click.option("--restart", is_flag=True, help="Start from the first page, even where an earlier run of the same "
              "lists and --since stopped half-way (by default it carries on from its last completed page).")
@click.option("--in-worker", is_flag=True, help="Run it on a worker (an RQ job on the 'partnero-backfill' queue, "
              "followed in the dashboard and `status`) instead of in this process.")
def backfill(entities: tuple[str, ...], since: datetime | None, restart: bool, in_worker: bool) -> None:
    """Load what Partnero already holds: every partner, customer and transaction, through the
    same mappings as webhooks, into the warehouse, the ledger and Salesforce.

    Pages through Partnero's lists (PARTNERO_API_KEY; PARTNERO_API_URL, default
    https://api.partnero.com/v1) 250 objects at a time. Each object is applied as if its
    webhook had arrived when the list was read: one older than what is held is left alone, one
    held as listed is not stored again (running it twice changes nothing), and the ledger books
    each reward once; a refunded transaction (deleted_at set) ends refunded, its commission booked
    and reversed. Safe while webhooks keep arriving. Salesforce writes are sent by the workers.

    Interrupted (Ctrl-C, a restart, an error), it carries on from its last completed page when
    run again with the same lists and --since. Prints progress: the page, records, rate and time
    left. It honours Partnero's rate limits (429, Retry-After) and backs off when Partnero is
    away; an API key Partnero refuses stops it at once.

    Exit status 0 when it finished and every object was applied; 1 when some could not be
    (each is recorded, with its reason, on its inbox row: see `status` and /ops), or when
    Partnero or the database could not be reached (run it again to carry on); 2 when the API key
    is missing or refused.
    """
    from sync.partnero.backfill import Backfill
    from sync.services import Services

    settings = _settings()
    services = Services.build(settings)
    filler = Backfill(services, _partnero_api(settings))
    since = _utc(since)
    run = filler.prepare(entities, since, restart=restart)
    carried_on = run.next_page > 1 or run.entity != run.entities[0]
    if carried_on:
        click.echo(f"backfill #{run.id}: carrying on from {run.entity} page {run.next_page} "
                   f"({run.records:,} records done before; --restart starts again)")
    if in_worker:
        filler.runs.queue(run.id)
        job_id = services.jobs.enqueue_backfill(run.id, f"backfill #{run.id}: {', '.join(run.entities)}")
        click.echo(f"backfill #{run.id} queued on a worker (job {job_id}); follow it in the dashboard (/rq) "
                   "or with `partnero-sync status`")
        return
    show = _Progress()
    try:
        run = filler.run(run, on_page=show)
    except KeyboardInterrupt:
        click.echo("", err=True)
        stopped = filler.runs.get(run.id)
        click.echo(f"backfill #{run.id} interrupted at {stopped.entity} page {stopped.next_page}; run the same "
                   "command again to carry on from there", err=True)
        sys.exit(1)
    show.end()
    click.echo(f"backfill #{run.id} finished: {run.records:,} records, {run.applied:,} applied, "
               f"{run.unchanged:,} unchanged, {run.skipped:,} skipped, {run.failed:,} failed")
    if services.processor.outbox is not None and run.applied:
        click.echo("the workers send the Salesforce writes (`partnero-sync status` shows the backlog)")
    if run.failed:
        raise SyncError(f"{run.failed:,} deliveries could not be applied; each is recorded with its reason "
                        "(`partnero-sync status`, /ops)")


class _Progress:
    """The progress line: redrawn in place on a terminal, a line every ten seconds otherwise."""

    EVERY = 10.0

    def __init__(self) -> None:
        import time

        self.clock = time.monotonic
        self.tty = sys.stdout.isatty()
        self.last = float("-inf")
        self.drawn = False

    def __call__(self, progress) -> None:
        now = self.clock()
        if self.tty:
            click.echo("\r" + progress.line() + "\x1b[K", nl=False)
            self.drawn = True
        elif now - self.last >= self.EVERY:
            click.echo(progress.line())
            self.last = now

    def end(self) -> None:
        if self.drawn:
            click.echo("")


@main.command()
@click.option("--entities", type=ENTITY_LISTS, default="partners,customers,transactions", show_default=True,
              help="Which of Partnero's lists to compare (comma-separated).")
@click.option("--fix", is_flag=True, help="Apply the corrections, through the same pipeline as webhooks.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON: listed, drift "
              "[{entity, key, kind, fields, reason?}], counts, fixed, failed.")
def reconcile(entities: tuple[str, ...], fix: bool, as_json: bool) -> None:
    """Compare Partnero's lists with the warehouse and the ledger, and report the drift.

    Drift is what webhooks missed: records missing here, stale here (the columns that differ are
    named, never their values), archived or deleted upstream, commission whose reward status or
    amount moved, records held here that Partnero no longer has (each looked up on its own: a
    404 means gone), and objects the mappings cannot apply. With --fix, the corrections are
    applied as a backfill would (an object never overwrites a newer state here).

    Meant for a schedule as well as by hand, e.g. a daily `partnero-sync reconcile --fix` (see
    the README). Exit status 0 when nothing drifts (or, with --fix, everything was corrected);
    1 when something drifts (or could not be corrected), or Partnero or the database could not
    be reached; 2 when the API key is missing or refused.
    """
    from sync.partnero.reconcile import Reconcile, render
    from sync.services import Services

    settings = _settings()
    services = Services.build(settings)
    checker = Reconcile(services, _partnero_api(settings))
    pages = _Pages(enabled=not as_json)
    report = checker.run(entities, fix=fix, on_page=pages)
    pages.end()
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render(report, fixed=fix))
    if report.failed or (report.drifts and not fix):
        sys.exit(1)


class _Pages:
    """Which page of which list is being read, on standard error while a terminal watches."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, entity: str, page: int, last_page: int | None) -> None:
        if self.enabled:
            of = f" of {last_page}" if last_page else ""
            click.echo(f"\rreading {entity}: page {page}{of}\x1b[K", nl=False, err=True)

    def end(self) -> None:
        if self.enabled:
            click.echo("\r\x1b[K", nl=False, err=True)


@main.command("send-test")
@click.option(
    "--url",
    default="http://127.0.0.1:5000/webhooks/partnero",
    show_default=True,
    help="The receiver to post to.",
)
@click.option(
    "--event", default="partner.created", show_default=True, help="Event type of the sample delivery."
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Send this saved delivery (JSON) instead of a generated sample.",
)
def send_test(url: str, event: str, path: Path | None) -> None:
    """Sign a delivery with PARTNERO_WEBHOOK_SECRET and POST it, as Partnero would.

    Use it to check a deployment end to end, or to feed a saved delivery in again. Prints the
    receiver's answer. Exit status 1 when the receiver cannot be reached or does not answer
    2xx; 2 when PARTNERO_WEBHOOK_SECRET is not set.
    """
    from sync.samples import sample_delivery
    from sync.signature import sign

    settings = _settings()
    secret = settings.require_webhook_secret()[0]
    body = path.read_bytes() if path else json.dumps(sample_delivery(event)).encode()
    status, answer = _post(url, body, {"Signature": sign(body, secret)})
    click.echo(f"{status} {answer}")
    if status >= 300:
        sys.exit(1)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:
        raise SyncError(f"could not reach {redact_url(url)}: {exc}") from exc


@main.group()
def mappings() -> None:
    """Check the mapping files, or preview what a delivery would become.

    Use these while editing the files in mappings/ (or MAPPINGS_DIR), before restarting the
    workers or running `migrate`.
    """


@mappings.command("check")
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="The mapping directory (default: MAPPINGS_DIR, else ./mappings).")
def mappings_check(directory: Path | None) -> None:
    """Load and check every mapping file; list every problem with file, line and field.

    The web and the worker run the same check at start and refuse to start on a problem; run
    it before deploying a changed file. Exit status 1 when there are problems.
    """
    from sync.mapping import MappingError, load_mappings
    from sync.schema import RESERVED_TABLES

    directory = directory or _settings().mappings_dir
    try:
        loaded = load_mappings(directory, RESERVED_TABLES)
    except MappingError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for mapping in loaded.mappings:
        target = mapping.warehouse
        click.echo(
            f"{mapping.path}: {mapping.entity}: {len(mapping.events)} events -> table {target.table} "
            f"({len(target.column_types())} columns)" + (", ledger" if mapping.ledger else "")
        )
    click.echo("mappings OK")


@mappings.command("preview")
@click.argument("delivery", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="The mapping directory (default: MAPPINGS_DIR, else ./mappings).")
def mappings_preview(delivery: Path, directory: Path | None) -> None:
    """Print what DELIVERY (a saved delivery, JSON) would write to each target. Writes nothing.

    Use it to see the effect of a mapping change on a real delivery before deploying it. Needs
    no database. Exit status 2 when the mapping files have problems.
    """
    from sync.mapping import load_mappings
    from sync.preview import render
    from sync.schema import RESERVED_TABLES

    directory = directory or _settings().mappings_dir
    click.echo(render(load_mappings(directory, RESERVED_TABLES), delivery.read_bytes()))


@main.command()
@click.option("--since", type=_DATE, help="Only deliveries received from this date (UTC) on.")
@click.option("--event", "event_type", metavar="TYPE", help="Only deliveries of this event type.")
def replay(since: datetime | None, event_type: str | None) -> None:
    """Apply stored deliveries again, oldest first; e.g. after a mapping gained a column.

    Use it after a mapping change, or to fill the Salesforce outbox when turning CRM sync on.
    Idempotent: what is already in the warehouse stays as it is, newer states still win, and no
    commission is booked twice. Deliveries whose body `prune` dropped are skipped and counted.
    Deliveries that fail are reported and left as failed (retry them later with
    `requeue-failed`). Exit status 1 when any failed, or the database cannot be reached.
    """
    from sync.replay import replay as run_replay
    from sync.services import Services

    services = Services.build(_settings())
    services.migrate()
    result = run_replay(services, since=_utc(since), event_type=event_type)
    pruned = f", {result.pruned} skipped: pruned (their bodies were dropped)" if result.pruned else ""
    click.echo(
        f"replayed {result.total}: {result.processed} processed, {result.ignored} ignored, "
        f"{len(result.failed)} failed{pruned}"
    )
    _list_failures(result.failed, "failed (left failed; retry them with `requeue-failed` after a fix)")


@main.group()
def webhooks() -> None:
    """Partnero's webhook subscriptions for this program: list them, point one at the receiver,
    delete one.

    They call Partnero's REST API with PARTNERO_API_KEY (an API key of the program: Integration
    -> API in Partnero; one key belongs to one program), at PARTNERO_API_URL (default
    https://api.partnero.com/v1). Exit status 2 when the key is not set or Partnero refuses it;
    1 when Partnero cannot be reached or refuses the call.
    """


def _partnero(settings: Settings):
    from sync.partnero.api import PartneroApi

    return PartneroApi(settings.partnero)


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print the subscriptions as JSON (key, name, url, is_active, events).")
def webhooks_list(as_json: bool) -> None:
    """List the program's webhook subscriptions: key, name, URL, whether active, and events.

    Signing secrets are never shown here: `webhooks register` prints the one of the subscription
    it creates or updates.
    """
    from sync.partnero import webhooks as subscriptions

    hooks = _partnero(_settings()).webhooks()
    if as_json:
        click.echo(json.dumps([subscriptions.shown(h) for h in hooks], indent=2))
    else:
        click.echo(subscriptions.render(hooks))


@webhooks.command("register")
@click.option("--url", required=True, metavar="URL",
              help="The receiver as Partnero will reach it: https://your-app.example.com/webhooks/partnero.")
@click.option("--name", help="The subscription's name in Partnero (default: the name it has, else partnero-sync).")
def webhooks_register(url: str, name: str | None) -> None:
    """Subscribe URL to exactly the event types the mapping files handle.

    Run it when deploying, and again after a mapping file gained or lost an event type. When a
    subscription already sends to URL it is updated (events, name, made active) instead of a
    second one being created, so running it twice is harmless. Event types Partnero refuses
    (not offered to this program) are left out, with a warning. Prints the subscription's signing
    secret once, as the line PARTNERO_WEBHOOK_SECRET=… to set where the web process runs (it is
    never logged). Warns when URL is not https. Exit status 2 when the mapping files have problems
    or URL is not an http(s) URL.
    """
    from sync.mapping import load_mappings
    from sync.partnero import webhooks as subscriptions
    from sync.schema import RESERVED_TABLES

    settings = _settings()
    try:
        warnings = subscriptions.check_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    events = sorted(load_mappings(settings.mappings_dir, RESERVED_TABLES).events)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    done = subscriptions.register(_partnero(settings), url.strip(), events, name)
    hook = done.webhook
    sent = [e for e in events if e not in done.refused]
    click.echo(f"{done.action} webhook {hook.get('key')} ({hook.get('name')}) sending {len(sent)} event types to "
               f"{hook.get('url', url)}: {', '.join(sent)}")
    if done.refused:
        click.echo(f"warning: Partnero does not offer {', '.join(done.refused)} to this program: not subscribed "
                   "(the mappings still apply them if they ever arrive)", err=True)
    for key in done.others:
        click.echo(f"warning: webhook {key} also sends to this URL (each delivery would arrive twice): "
                   f"`partnero-sync webhooks delete {key}` removes it", err=True)
    if done.secret is None:
        click.echo("Partnero's answer holds no signing secret: the one this subscription had stays valid "
                   "(keep PARTNERO_WEBHOOK_SECRET as it is)")
        return
    click.echo("its signing secret, for the web process's environment (shown here only):")
    click.echo(f"PARTNERO_WEBHOOK_SECRET={done.secret}")
    if settings.webhook_secrets and done.secret not in settings.webhook_secrets:
        click.echo("(while deliveries signed with the secret set now may still arrive, set both, the new one "
                   "first, separated by a comma)")


@webhooks.command("delete")
@click.argument("key")
def webhooks_delete(key: str) -> None:
    """Delete the webhook subscription KEY (as `webhooks list` shows it): Partnero stops sending
    its deliveries. Exit status 1 when the program has no such subscription.
    """
    from sync.partnero import webhooks as subscriptions

    subscriptions.delete(_partnero(_settings()), key)
    click.echo(f"deleted webhook {key}")


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

    run_dev(_settings(), host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    main()
