"""The Salesforce outbox: ``crm-errors``, ``crm-retry`` and ``crm-flush``; the org: ``crm check``."""

from __future__ import annotations

import json
import sys

import click

from sync.cli.base import load_settings, main, served_program
from sync.core.errors import ConfigurationError, SyncError
from sync.ops.terminal import safe


@main.command("crm-errors")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="List at most this many.")
@click.option("--program", metavar="NAME", callback=served_program,
              help="Only records of this Partnero program (default: all).")
def crm_errors(limit: int, program: str | None) -> None:
    """List the records Salesforce refused (failed) or that wait for their parent (waiting),
    newest first, with Salesforce's error code and message, and (when PARTNERO_PROGRAMS names
    programs) each record's program.

    Use it when `status` reports refused records: fix the cause in Salesforce or in a mapping,
    then run `crm-retry`. Exit status 2 for a program that is not configured; 1 when the
    database cannot be reached.
    """
    from sync.services import Services
    from sync.store.outbox import Outbox

    services = Services.build(load_settings())
    with services.inbox.engine.connect() as conn:
        errors = Outbox().errors(conn, limit, program=program)
    if not errors:
        click.echo("no Salesforce errors")
        return
    named = services.settings.named_programs
    for e in errors:
        when = e["error_at"].strftime("%Y-%m-%d %H:%M:%S") if e["error_at"] else "-"
        of = f"{safe(e['program'])}  " if named else ""
        click.echo(f"{when}  {e['status']:<7}  {of}{safe(e['object'])} {safe(e['external_id'])}: "
                   f"{safe(e['error_code'])}: {safe(e['error_message'])}")


@main.command("crm-retry")
@click.option("--object", "object_name", metavar="SOBJECT", help="Only records of this Salesforce object.")
@click.option("--program", metavar="NAME", callback=served_program,
              help="Only records of this Partnero program (default: all).")
def crm_retry(object_name: str | None, program: str | None) -> None:
    """Send refused and waiting records again (after fixing the cause in Salesforce or a mapping).

    Makes them due now and asks the workers for a flush. Records refused because the mapping
    could not compute a field (MAPPING_ERROR in `crm-errors`) are not sent: after fixing the
    mapping, `replay` their deliveries. Exit status 2 while Salesforce sync is off, or for a
    program that is not configured; 1 when the database or Redis cannot be reached.
    """
    from sync.services import Services
    from sync.store.outbox import Outbox

    services = Services.build(load_settings())
    if not services.settings.salesforce.enabled:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    with services.inbox.engine.begin() as conn:
        count = Outbox().retry_failed(conn, object_name, program=program)
        uncomputed = Outbox().refused_by_mapping(conn, object_name, program=program)
    services.flush_schedule.forget_problem()
    services.flush_schedule.request(force=True)
    click.echo(f"{count} records will be sent again")
    if uncomputed:
        click.echo(f"{uncomputed} records the mapping could not compute (MAPPING_ERROR) are not: fix the "
                   "mapping, then `partnero-sync replay` their deliveries")


@main.command("crm-flush")
@click.option("--force", is_flag=True, help="Send even while flushes are paused at the API budget.")
def crm_flush(force: bool) -> None:
    """Send what waits in the CRM outbox to Salesforce now, in this process, with progress.

    The workers flush by themselves; use this to watch a flush, or to drain a backlog without a
    worker. While flushes are paused at the API budget (SALESFORCE_API_BUDGET), it says so and
    sends nothing, with exit status 0 (a pause is not an error: the records wait); `--force` sends
    anyway. Exit status 2 while Salesforce sync is off or its login is refused; 1 when the
    database or Salesforce cannot be reached.
    """
    from sync.services import Services

    services = Services.build(load_settings())
    if services.flusher() is None:
        raise ConfigurationError("Salesforce sync is off: no SALESFORCE_ variables are set")
    report = services.flush_schedule.run_foreground(
        on_progress=lambda r: click.echo(f"  {safe(r.summary())}", err=True), force=force)
    click.echo(safe(report.summary()))
    if report.org_refusal is not None:
        raise SyncError(report.org_refusal.message)
    paused = None if force else services.flush_schedule.paused()
    if paused is not None:
        click.echo(f"flushes are paused: the org has used {paused['used']:,} of its {paused['allowance']:,} daily "
                   f"API requests, this service's budget is {paused['budget']:,} (SALESFORCE_API_BUDGET); the "
                   "records wait and the workers resume by themselves when usage falls; `crm-flush --force` "
                   "sends them now")


@main.group("crm")
def crm() -> None:
    """Your Salesforce org and the mappings: does the org have what they write?"""


@crm.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def crm_check(as_json: bool) -> None:
    """Compare the org with every mapping's `salesforce:` section, and say what to fix.

    Every program's mappings count (PARTNERO_<NAME>_MAPPINGS_DIR): the org serves them all.

    Reads each mapped object's description (its fields as the integration user sees them) and
    reports, per object and field: an object or field missing (or hidden from the integration
    user by field-level security), a field the user cannot create or edit, a type that does not
    take the mapping's `type:`, a text shorter than what the mapping writes, an external id not
    marked External ID and Unique, a lookup with the wrong target, relationship name or parent
    key, and a field the org requires that the mapping never fills. It reads no records and
    prints none.

    Exit status: 0 the org fits; 1 it does not (the table says what to do); 2 cannot tell
    (Salesforce not configured, the login refused, no access, Salesforce away).
    """
    from sync.salesforce import org
    from sync.salesforce.client import SalesforceClient
    from sync.store.org_checks import Verdict

    settings = load_settings()
    mappings = every_program_mappings(settings)
    if not settings.salesforce.enabled:
        _cannot_tell("Salesforce is not configured: set one group of SALESFORCE_ variables "
                     "(docs/salesforce.md), then run crm check again", as_json)
    fit = org.check(SalesforceClient(settings.salesforce), mappings)
    if fit.verdict is Verdict.CANNOT_TELL:
        _cannot_tell(f"cannot tell whether the org fits: {fit.reason}", as_json)
    found = list(fit.findings)
    if as_json:
        click.echo(json.dumps({"fits": not found, "objects": list(fit.objects),
                               "findings": [f.as_json() for f in found]}, indent=2))
    else:
        print_findings(found, list(fit.objects))
    sys.exit(1 if found else 0)


def every_program_mappings(settings) -> list:
    """Each program's mappings, loaded once per mapping directory (programs may share one): the
    org must fit them all. A bad file raises ``MappingError``."""
    from sync.services import distinct_mappings, load_program_mappings

    return distinct_mappings(load_program_mappings(settings))


def _cannot_tell(sentence: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"fits": None, "cannot_tell": sentence}, indent=2))
    stop(sentence)


def stop(sentence: str) -> None:
    """End a crm command that cannot tell or cannot act: ``sentence`` on stderr, exit status 2."""
    click.echo(f"partnero-sync: {safe(sentence)}", err=True)
    sys.exit(2)


def print_findings(found: list, objects: list[str]) -> None:
    """The findings as a table (object, field, problem, what to do), or that the org fits."""
    if not found:
        click.echo(f"the org fits the mappings ({', '.join(objects)})")
        return
    rows = [("OBJECT", "FIELD", "PROBLEM", "WHAT TO DO")]
    rows += [(f.object, f.field or "-", f"{f.problem}: {f.detail}", f"{f.fix} ({f.source})") for f in found]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo(safe("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3]))
    click.echo(f"\n{len(found)} problem{'s' if len(found) != 1 else ''}: the org does not fit the mappings yet")
