"""The ``partnero-sync`` command."""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path

import click

from sync import logs
from sync.errors import ConfigurationError, SyncError
from sync.settings import Settings, redact_url

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns configuration and connection problems into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"partnero-sync: configuration error: {exc}", err=True)
            sys.exit(2)
        except SyncError as exc:
            click.echo(f"partnero-sync: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """partnero-sync: Partnero webhooks into Salesforce and a SQL warehouse.

    Configured from the environment: PARTNERO_WEBHOOK_SECRET, DATABASE_URL (default
    sqlite:///partnero-sync.db), REDIS_URL (default redis://localhost:6379/0), MAPPINGS_DIR
    (default mappings), LOG_LEVEL (default INFO), and SALESFORCE_* for the CRM sync (none set:
    only the warehouse is synced). README.md explains each.
    """


def _settings() -> Settings:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return settings


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (the Procfile's release step).

    Creates missing tables and adds columns that mappings gained. Never drops or converts a
    column: a column that left the mappings is kept (and reported), one whose type changed
    stops the migration with an explanation. Safe to run any number of times.
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
    help="Seconds between sweeps for stored deliveries whose job was lost.",
)
def worker(burst: bool, sweep_every: int) -> None:
    """Run an RQ worker on the 'partnero' queue, with RQ's scheduler for delayed retries.

    On SIGTERM (a PaaS stopping the process) it finishes the job in hand, then exits.
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
    """Enqueue stored deliveries that are still pending and have no job (e.g. Redis was down)."""
    from sync.services import Services
    from sync.sweeper import sweep as run_sweep

    services = Services.build(_settings())
    count = run_sweep(services.inbox, services.jobs, timedelta(seconds=older_than))
    click.echo(f"re-enqueued {count} pending deliveries")


@main.command()
def status() -> None:
    """Show the inbox by status and, with Salesforce on, the CRM outbox by object and status."""
    from sync.crm.outbox import STATUSES, Outbox
    from sync.services import Services

    services = Services.build(_settings())
    counts = services.inbox.counts()
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        click.echo(f"{name:<{width}}  {count}")
    click.echo(f"salesforce: {services.settings.salesforce.describe()}")
    if services.settings.salesforce.enabled:
        with services.inbox.engine.connect() as conn:
            outbox = Outbox().counts(conn)
        for obj, by_status in sorted(outbox.items()):
            click.echo(f"  {obj}: " + ", ".join(f"{by_status[s]} {s}" for s in STATUSES))


@main.command("crm-errors")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
def crm_errors(limit: int) -> None:
    """List the records Salesforce refused (failed) or that wait for their parent (waiting),
    newest first, with Salesforce's error code and message."""
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
    """Send refused and waiting records again (after fixing the cause in Salesforce or a mapping)."""
    from sync.crm.outbox import Outbox
    from sync.services import Services

    services = Services.build(_settings())
    if not services.settings.salesforce.enabled:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    with services.inbox.engine.begin() as conn:
        count = Outbox().retry_failed(conn, object_name)
    services.flushes.forget_problem()
    services.flushes.request(force=True)
    click.echo(f"{count} records will be sent again")


@main.command("crm-flush")
def crm_flush() -> None:
    """Send what waits in the CRM outbox to Salesforce now, in this process, with progress."""
    from sync.services import Services

    services = Services.build(_settings())
    if services.flusher() is None:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    report = services.flushes.run_foreground(on_progress=lambda r: click.echo(f"  {r.summary()}", err=True))
    click.echo(report.summary())
    if report.org_refusal is not None:
        raise SyncError(report.org_refusal.message)


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
    """Sign a delivery with PARTNERO_WEBHOOK_SECRET and POST it, as Partnero would."""
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
        raise SyncError(f"could not reach {url}: {exc}") from exc


@main.group()
def mappings() -> None:
    """Check the mapping files, or preview what a delivery would become."""


@mappings.command("check")
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="The mapping directory (default: MAPPINGS_DIR, else ./mappings).")
def mappings_check(directory: Path | None) -> None:
    """Load and check every mapping file; list every problem with file, line and field.

    Exit status 1 when there are problems.
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
    """Print what DELIVERY (a saved delivery, JSON) would write to each target. Writes nothing."""
    from sync.mapping import load_mappings
    from sync.preview import render
    from sync.schema import RESERVED_TABLES

    directory = directory or _settings().mappings_dir
    click.echo(render(load_mappings(directory, RESERVED_TABLES), delivery.read_bytes()))


@main.command()
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only deliveries received from this date (UTC) on.")
@click.option("--event", "event_type", metavar="TYPE", help="Only deliveries of this event type.")
def replay(since, event_type: str | None) -> None:
    """Apply stored deliveries again, oldest first; e.g. after a mapping gained a column.

    Idempotent: what is already in the warehouse stays as it is, newer states still win, and no
    commission is booked twice. Deliveries that fail are reported and left as failed.
    """
    from datetime import timezone

    from sync.replay import replay as run_replay
    from sync.services import Services

    services = Services.build(_settings())
    services.migrate()
    since_utc = since.replace(tzinfo=timezone.utc) if since else None
    result = run_replay(services, since=since_utc, event_type=event_type)
    click.echo(
        f"replayed {result.total}: {result.processed} processed, {result.ignored} ignored, "
        f"{len(result.failed)} failed"
    )
    for event_id, reason in result.failed[:20]:
        click.echo(f"  inbox #{event_id}: {reason}", err=True)
    if result.failed:
        sys.exit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """Run web and worker together on this machine, on the embedded defaults.

    Creates the schema, then serves the receiver and runs a worker. Without
    PARTNERO_WEBHOOK_SECRET a development secret is used and printed. Where no Redis answers
    at REDIS_URL, an in-process stand-in is used (one process, nothing kept on exit).
    """
    from sync.local import run_dev

    run_dev(host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    main()
