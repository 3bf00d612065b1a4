"""The Salesforce outbox: ``crm-errors``, ``crm-retry`` and ``crm-flush``."""

from __future__ import annotations

import click

from sync.cli.base import load_settings, main
from sync.core.errors import ConfigurationError, SyncError
from sync.ops.terminal import safe


@main.command("crm-errors")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="List at most this many.")
def crm_errors(limit: int) -> None:
    """List the records Salesforce refused (failed) or that wait for their parent (waiting),
    newest first, with Salesforce's error code and message.

    Use it when `status` reports refused records: fix the cause in Salesforce or in a mapping,
    then run `crm-retry`. Exit status 1 when the database cannot be reached.
    """
    from sync.services import Services
    from sync.store.outbox import Outbox

    services = Services.build(load_settings())
    with services.inbox.engine.connect() as conn:
        errors = Outbox().errors(conn, limit)
    if not errors:
        click.echo("no Salesforce errors")
        return
    for e in errors:
        when = e["error_at"].strftime("%Y-%m-%d %H:%M:%S") if e["error_at"] else "-"
        click.echo(f"{when}  {e['status']:<7}  {safe(e['object'])} {safe(e['external_id'])}: {safe(e['error_code'])}: "
                   f"{safe(e['error_message'])}")


@main.command("crm-retry")
@click.option("--object", "object_name", metavar="SOBJECT", help="Only records of this Salesforce object.")
def crm_retry(object_name: str | None) -> None:
    """Send refused and waiting records again (after fixing the cause in Salesforce or a mapping).

    Makes them due now and asks the workers for a flush. Records refused because the mapping
    could not compute a field (MAPPING_ERROR in `crm-errors`) are not sent: after fixing the
    mapping, `replay` their deliveries. Exit status 2 while Salesforce sync is off; 1 when the
    database or Redis cannot be reached.
    """
    from sync.services import Services
    from sync.store.outbox import Outbox

    services = Services.build(load_settings())
    if not services.settings.salesforce.enabled:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    with services.inbox.engine.begin() as conn:
        count = Outbox().retry_failed(conn, object_name)
        uncomputed = Outbox().refused_by_mapping(conn, object_name)
    services.flush_schedule.forget_problem()
    services.flush_schedule.request(force=True)
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

    services = Services.build(load_settings())
    if services.flusher() is None:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    report = services.flush_schedule.run_foreground(
        on_progress=lambda r: click.echo(f"  {safe(r.summary())}", err=True))
    click.echo(safe(report.summary()))
    if report.org_refusal is not None:
        raise SyncError(report.org_refusal.message)
