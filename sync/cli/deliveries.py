"""The inbox, the mappings and the ledger: ``requeue-failed``, ``prune``, ``replay``, ``send-test``,
``mappings check|preview`` and ``ledger``."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import click

from sync.cli.base import DATE, DURATION, load_settings, main, served_program, utc
from sync.core.errors import SyncError
from sync.ops.terminal import safe
from sync.settings import redact_url


@main.command("requeue-failed")
@click.option("--since", type=DATE, help="Only deliveries received from this date (UTC) on.")
@click.option("--event", "event_type", metavar="TYPE", help="Only deliveries of this event type.")
@click.option("--program", metavar="NAME", callback=served_program,
              help="Only deliveries of this program (default: every program's).")
@click.option("--dry-run", is_flag=True, help="Only say what would be retried and skipped; change nothing.")
def requeue_failed(since: datetime | None, event_type: str | None, program: str | None, dry_run: bool) -> None:
    """Retry failed deliveries, after fixing what failed them (a mapping, the warehouse, a bug).

    Sets the matching failed deliveries (of one program with --program) back to pending, 1,000
    at a time, and wakes a worker to apply them. Their attempts count afresh, and their last
    error stays until a retry succeeds. A delivery the current mapping files still cannot apply
    is skipped and listed with the reason (its last error is updated), and the others go on.

    If Redis cannot take the wake-up, the deliveries are set back to pending all the same: the
    worker's sweeper wakes one once Redis answers. It says so, since nothing more is needed.
    Exit status 1 when some deliveries still cannot be applied, or the database cannot be read
    or written.
    """
    from sync.pipeline.requeue import dry_run as preview
    from sync.pipeline.requeue import requeue_failed as run_requeue
    from sync.services import Services

    services = Services.build(load_settings())
    check = services.processor.check
    of = f" of program {program}" if program else ""
    if dry_run:
        count, skipped = preview(services.inbox, check, since=utc(since), event_type=event_type, program=program)
        click.echo(f"would requeue {count} failed deliveries{of} (dry run: nothing changed)")
    else:
        result = run_requeue(services.inbox, services.queue, since=utc(since), event_type=event_type,
                             still_failing=check, program=program)
        woken = ", a worker woken" if result.enqueued else ""
        click.echo(f"requeued {result.requeued} failed deliveries{of}{woken}")
        if result.redis_error is not None:
            click.echo(
                f"Redis could not take the wake-up ({safe(result.redis_error)}): the deliveries are pending, and the "
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
        click.echo(f"  inbox #{event_id}: {safe(reason)}", err=True)
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
    body; pending and failed ones keep it. So do the texts of the mappings' notifications sent
    or failed longer ago (each row stays, so its delivery still never sends it twice). Each row stays, with its status and fingerprint, so
    Partnero sending the same delivery again is still answered "duplicate"; `replay` skips
    pruned deliveries (and says how many). Works 1,000 rows a transaction; running it again, or
    several at once (a scheduler that overlaps), is harmless. Meant for a daily scheduler, e.g.
    `partnero-sync prune --older-than 90d`. Exit status 1 when the database cannot be reached.
    """
    from sync.ops.progress import progressbar
    from sync.services import Services
    from sync.store import notifications
    from sync.store.inbox import Pruned

    services = Services.build(load_settings())
    engine = services.inbox.engine
    before = services.clock() - older_than
    when = f"received before {before:%Y-%m-%d %H:%M:%S} UTC"
    due = services.inbox.prunable(before)
    if dry_run:
        texts = notifications.prunable_texts(engine, before)
        click.echo(f"would prune {due.rows} deliveries ({_size(due.bytes)}) {when} and the texts of {texts} "
                   "notifications (dry run: nothing changed)")
        return
    total = Pruned()
    with progressbar(due.rows, "pruning") as bar:
        for batch in services.inbox.prune(before):
            total += batch
            bar.update(batch.rows)
    texts = notifications.prune_texts(engine, before)
    click.echo(f"pruned {total.rows} deliveries ({_size(total.bytes)}) {when} and the texts of {texts} notifications")


def _size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


@main.command("ledger")
@click.argument("partner_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print the entries and totals as JSON (amounts as exact decimal text).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="Show the newest this many entries (0: all). The totals always count every entry.")
@click.option("--program", metavar="NAME", callback=served_program,
              help="Only the partner's statement in this program (default: in each program that has one).")
def ledger_command(partner_id: str, as_json: bool, limit: int, program: str | None) -> None:
    """Show one partner's commission: their ledger entries and totals per currency.

    What to check before paying a partner. Each entry is a reward booked (commission), moved by a
    newer state of its transaction (adjustment: its amount, status, partner or currency changed)
    or by a refund (reversal), with exact amounts; entries are only ever added. The totals, per
    currency: approved (status ok), pending (review_period, or any other status), rejected,
    reversed (refunded), and owed = approved + pending. Currencies are never added together, and
    points or credits (not money) are listed apart. Salesforce gets the totals of the program
    currency (PARTNERO_CURRENCY, else the one most used).

    With several programs (PARTNERO_PROGRAMS), a partner id is a partner of one program: each
    program holding entries for PARTNER_ID gets a statement of its own, in its own currency, and
    nothing is added across programs; --program shows one. --json then prints
    {"partner_id", "programs": {PROGRAM: statement}}, or one statement with --program.

    Exit status 0; 1 when the ledger has no entry for PARTNER_ID (in that program), or the
    database cannot be reached; 2 when --program names a program this deployment does not serve.
    """
    from sync.ops import statement
    from sync.services import Services

    settings = load_settings()
    services = Services.build(settings)
    programs = [settings.program(program)] if program else list(settings.programs)
    found = statement.take_each(services.inbox.engine, partner_id, programs, limit or None)
    if not found:
        raise SyncError(f"no ledger entries for partner {partner_id!r}" + (f" in program {program}" if program else ""))
    several = len(settings.programs) > 1
    if as_json:
        click.echo(json.dumps(statement.as_json(found, by_program=several and not program), indent=2))
    else:
        click.echo(statement.render_each(found, several))


@main.command("send-test")
@click.option(
    "--url",
    default=None,
    help="The receiver to post to. [default: http://127.0.0.1:5000/webhooks/partnero, and "
         "/webhooks/partnero/NAME for a program PARTNERO_PROGRAMS names]",
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
@click.option("--program", metavar="NAME", callback=served_program,
              help="Sign with this program's secret and post to its URL (default: the first program).")
def send_test(url: str | None, event: str, path: Path | None, program: str | None) -> None:
    """Sign a delivery with the program's secret (PARTNERO_WEBHOOK_SECRET, or
    PARTNERO_<NAME>_WEBHOOK_SECRET for a program PARTNERO_PROGRAMS names) and POST it, as
    Partnero would.

    Use it to check a deployment end to end, or to feed a saved delivery in again. Prints the
    receiver's answer. Exit status 1 when the receiver cannot be reached or does not answer
    2xx; 2 when the program's secret is not set.
    """
    from sync.core.signature import sign
    from sync.partnero.samples import sample_delivery

    settings = load_settings()
    chosen = settings.require_program(program) if program else settings.programs[0]
    secret = chosen.require_webhook_secret()[0]
    if url is None:
        url = "http://127.0.0.1:5000/webhooks/partnero" + (f"/{chosen.name}" if chosen.named else "")
    body = path.read_bytes() if path else json.dumps(sample_delivery(event)).encode()
    status, answer = _post(url, body, {"Signature": sign(body, secret)})
    click.echo(f"{status} {safe(answer.rstrip())}")  # the answer's closing line break is not part of it
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


def _program_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--program``'s value, when it is a program's name (else a usage error, exit status 2)."""
    from sync.settings import PROGRAM_NAME

    if not PROGRAM_NAME.fullmatch(value):
        raise click.BadParameter("a program's name is lower-case letters, digits and dashes (not first or last), "
                                 "at most 40 characters")
    return value


@mappings.command("check")
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="The mapping directory (default: each program's, else MAPPINGS_DIR, else ./mappings).")
def mappings_check(directory: Path | None) -> None:
    """Load and check every mapping file; list every problem with file, line and field.

    Without --dir, checks the mapping directory of every program (PARTNERO_<NAME>_MAPPINGS_DIR,
    else MAPPINGS_DIR). The web and the worker run the same check at start and refuse to start on
    a problem; run it before deploying a changed file. A notify entry whose URL variable
    (<NAME>_WEBHOOK_URL) is not set is a problem here too (a worker starts, logs it, and fails
    each such message with that reason). Exit status 1 when there are problems.
    """
    from sync.mapping import MappingError, load_mappings
    from sync.mapping.spec import unset_urls
    from sync.store.schema import RESERVED_TABLES

    settings = load_settings()
    directories = [directory] if directory else list(dict.fromkeys(p.mappings_dir for p in settings.programs))
    failed = False
    for each in directories:
        try:
            loaded = load_mappings(each, RESERVED_TABLES)
            unset = unset_urls(loaded, settings.webhook_urls)
            if unset:  # the worker would start, and fail each such message with this reason
                raise MappingError(unset)
        except MappingError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        for mapping in loaded.mappings:
            target = mapping.warehouse
            click.echo(
                f"{mapping.path}: {mapping.entity}: {len(mapping.events)} events -> table {target.table} "
                f"({len(target.column_types())} columns)" + (", ledger" if mapping.ledger else "")
                + (f", notify {', '.join(n.name for n in mapping.notify)}" if mapping.notify else "")
            )
    if failed:
        sys.exit(1)
    click.echo("mappings OK")


@mappings.command("preview")
@click.argument("delivery", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="The mapping directory (default: the program's, else MAPPINGS_DIR, else ./mappings).")
@click.option("--program", default="default", show_default=True, callback=_program_name,
              help="The program the delivery would come from: expressions see it as program.")
def mappings_preview(delivery: Path, directory: Path | None, program: str) -> None:
    """Print what DELIVERY (a saved delivery, JSON) would write to each target. Writes nothing.

    Use it to see the effect of a mapping change on a real delivery before deploying it, and with
    --program what a delivery of that program would write (its Salesforce external ids), through
    its mappings (PARTNERO_<NAME>_MAPPINGS_DIR) when this deployment serves it. Needs no
    database. Exit status 2 when the mapping files have problems.
    """
    from sync.core.clock import system_clock
    from sync.mapping import load_mappings
    from sync.ops.preview import render
    from sync.store.schema import RESERVED_TABLES

    if directory is None:
        settings = load_settings()
        served = settings.program(program)
        directory = served.mappings_dir if served is not None else settings.mappings_dir
    loaded = load_mappings(directory, RESERVED_TABLES)
    click.echo(render(loaded, delivery.read_bytes(), system_clock(), program))


@main.command()
@click.option("--since", type=DATE, help="Only deliveries received from this date (UTC) on.")
@click.option("--event", "event_type", metavar="TYPE", help="Only deliveries of this event type.")
def replay(since: datetime | None, event_type: str | None) -> None:
    """Apply stored deliveries again, oldest first; e.g. after a mapping gained a column.

    Use it after a mapping change, or to fill the Salesforce outbox when turning CRM sync on.
    Idempotent: what is already in the warehouse stays as it is, newer states still win, and no
    commission is booked twice. Deliveries whose body `prune` dropped are skipped and counted.
    Deliveries that fail are reported and left as failed (retry them later with
    `requeue-failed`). Exit status 1 when any failed, or the database cannot be reached.
    """
    from sync.pipeline.replay import replay as run_replay
    from sync.services import Services

    services = Services.build(load_settings())
    services.migrate()
    result = run_replay(services, since=utc(since), event_type=event_type)
    pruned = f", {result.pruned} skipped: pruned (their bodies were dropped)" if result.pruned else ""
    click.echo(
        f"replayed {result.total}: {result.processed} processed, {result.ignored} ignored, "
        f"{len(result.failed)} failed{pruned}"
    )
    _list_failures(result.failed, "failed (left failed; retry them with `requeue-failed` after a fix)")
