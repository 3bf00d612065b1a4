"""Partnero's REST API: ``backfill``, ``reconcile`` and ``webhooks list|register|delete``."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from sync.cli.base import DATE, load_settings, main, utc
from sync.core.errors import SyncError
from sync.ops.progress import StatusLine
from sync.ops.terminal import safe
from sync.settings import Settings


class _Entities(click.ParamType):
    """A comma-separated choice of Partnero's lists: partners, customers, transactions."""

    name = "LISTS"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        from sync.rules.listed import ENTITIES

        if isinstance(value, tuple):
            return value
        chosen = {part.strip().lower() for part in str(value).split(",") if part.strip()}
        unknown = sorted(chosen - set(ENTITIES))
        if unknown or not chosen:
            self.fail(f"{', '.join(unknown) or 'nothing'}: choose among {', '.join(ENTITIES)}", param, ctx)
        return tuple(e for e in ENTITIES if e in chosen)


ENTITY_LISTS = _Entities()


def _api(settings: Settings):
    """Partnero's REST API with PARTNERO_API_KEY; a ConfigurationError (exit status 2) without it."""
    from sync.partnero.api import PartneroApi

    return PartneroApi(settings.partnero)


@main.command()
@click.option("--entities", type=ENTITY_LISTS, help="Which of Partnero's lists to load (comma-separated: partners, "
              "customers, transactions); they are read parents first. Default: every list a mapping file loads "
              "from; naming one no mapping loads stops it before anything is read.")
@click.option("--since", type=DATE, help="Only objects created, updated or deleted from this date (UTC) on. "
              "Partnero's lists are still read whole: the others are skipped.")
@click.option("--restart", is_flag=True, help="Start from the first page, even where an earlier run of the same "
              "lists and --since stopped half-way (by default it carries on from its last completed page).")
@click.option("--in-worker", is_flag=True, help="Run it on a worker (an RQ job on the 'partnero-backfill' queue, "
              "followed in the dashboard and `status`) instead of in this process.")
def backfill(entities: tuple[str, ...] | None, since: datetime | None, restart: bool, in_worker: bool) -> None:
    """Load what Partnero already holds: every partner, customer and transaction, through the
    same mappings as webhooks, into the warehouse, the ledger and Salesforce.

    Pages through Partnero's lists (PARTNERO_API_KEY; PARTNERO_API_URL, default
    https://api.partnero.com/v1), asking for 250 objects a page (Partnero may give fewer: its
    pages are followed to the last its answers name). Each object is applied as if its
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
    is missing or refused, or --entities names a list no mapping file loads.
    """
    from sync.partnero.backfill import Backfill
    from sync.services import Services

    settings = load_settings()
    services = Services.build(settings)
    filler = Backfill(services, _api(settings))
    since = utc(since)
    run = filler.prepare(entities, since, restart=restart)
    carried_on = run.next_page > 1 or run.entity != run.entities[0]
    if carried_on:
        click.echo(f"backfill #{run.id}: carrying on from {run.entity} page {run.next_page} "
                   f"({run.records:,} records done before; --restart starts again)")
    if in_worker:
        filler.runs.queue(run.id)
        job_id = services.queue.enqueue_backfill(run.id, f"backfill #{run.id}: {', '.join(run.entities)}")
        click.echo(f"backfill #{run.id} queued on a worker (job {job_id}); follow it in the dashboard (/rq) "
                   "or with `partnero-sync status`")
        return
    _backfill_here(filler, run, salesforce=services.processor.outbox is not None)


def _backfill_here(filler, run, salesforce: bool) -> None:
    """Run the backfill ``run`` in this process, printing its progress and what it did; exit
    status 1 when interrupted or when some objects could not be applied. ``salesforce``: the
    mappings write to Salesforce."""
    line = StatusLine(every=10)  # a line every ten seconds in a log
    try:
        run = filler.run(run, on_page=lambda progress: line.show(progress.line()))
    except KeyboardInterrupt:
        click.echo("", err=True)
        stopped = filler.runs.get(run.id)
        click.echo(f"backfill #{run.id} interrupted at {stopped.entity} page {stopped.next_page}; run the same "
                   "command again to carry on from there", err=True)
        sys.exit(1)
    line.end()
    click.echo(f"backfill #{run.id} finished: {run.records:,} records, {run.applied:,} applied, "
               f"{run.unchanged:,} unchanged, {run.skipped:,} skipped, {run.failed:,} failed")
    if salesforce and run.applied:
        click.echo("the workers send the Salesforce writes (`partnero-sync status` shows the backlog)")
    if run.failed:
        raise SyncError(f"{run.failed:,} deliveries could not be applied; each is recorded with its reason "
                        "(`partnero-sync status`, /ops)")


@main.command()
@click.option("--entities", type=ENTITY_LISTS, help="Which of Partnero's lists to compare (comma-separated: "
              "partners, customers, transactions). Default: every list a mapping file loads from.")
@click.option("--fix", is_flag=True, help="Apply the corrections, through the same pipeline as webhooks.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON: listed, drift "
              "[{entity, key, kind, fields, reason?}], counts, fixed, failed, left.")
def reconcile(entities: tuple[str, ...] | None, fix: bool, as_json: bool) -> None:
    """Compare Partnero's lists with the warehouse and the ledger, and report the drift.

    Drift is what webhooks missed: records missing here, stale here (the columns that differ are
    named, never their values), archived or deleted upstream, commission whose reward status or
    amount moved, records held here that Partnero no longer has (each looked up on its own: a
    404 means gone), and objects the mappings cannot apply. With --fix, the corrections are
    applied as a backfill would (an object never overwrites a newer state here); a partner or
    customer Partnero no longer has is deleted here, but a transaction is never refunded because
    it is missing (a refunded one is listed with deleted_at): it is left for a person.

    Meant for a schedule as well as by hand, e.g. a daily `partnero-sync reconcile --fix` (see
    docs/operating.md). Exit status 0 when nothing drifts (or, with --fix, everything was corrected);
    1 when something drifts (or could not be corrected, or was left for a person), or Partnero
    or the database could not be reached; 2 when the API key is missing or refused, or --entities
    names a list no mapping file loads.
    """
    from sync.partnero.reconcile import Reconcile, render
    from sync.services import Services

    settings = load_settings()
    services = Services.build(settings)
    checker = Reconcile(services, _api(settings))
    line = StatusLine(err=True)  # on a terminal only

    def reading(entity: str, page: int, last_page: int | None) -> None:
        line.show(f"reading {entity}: page {page}" + (f" of {last_page}" if last_page else ""))

    report = checker.run(entities, fix=fix, on_page=None if as_json else reading)
    line.end(keep=False)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render(report, fixed=fix))
    if report.failed or report.left or (report.drifts and not fix):
        sys.exit(1)


@main.group()
def webhooks() -> None:
    """Partnero's webhook subscriptions for this program: list them, point one at the receiver,
    delete one.

    They call Partnero's REST API with PARTNERO_API_KEY (an API key of the program: Integration
    -> API in Partnero; one key belongs to one program), at PARTNERO_API_URL (default
    https://api.partnero.com/v1). Exit status 2 when the key is not set or Partnero refuses it;
    1 when Partnero cannot be reached or refuses the call.
    """


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print the subscriptions as JSON (key, name, url, is_active, events).")
def webhooks_list(as_json: bool) -> None:
    """List the program's webhook subscriptions: key, name, URL, whether active, and events.

    Signing secrets are never shown here: `webhooks register` prints the one of the subscription
    it creates or updates. Exit status 2 when PARTNERO_API_KEY is not set or Partnero refuses it;
    1 when Partnero cannot be reached.
    """
    from sync.partnero import webhooks as subscriptions

    hooks = _api(load_settings()).webhooks()
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
    never logged). Warns when URL is not https. Exit status 2 when the mapping files have problems,
    URL is not an http(s) URL, or PARTNERO_API_KEY is not set or refused; 1 when Partnero cannot
    be reached or refuses the call.
    """
    from sync.mapping import load_mappings
    from sync.partnero import webhooks as subscriptions
    from sync.store.schema import RESERVED_TABLES

    settings = load_settings()
    try:
        warnings = subscriptions.check_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    events = sorted(load_mappings(settings.mappings_dir, RESERVED_TABLES).events)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    done = subscriptions.register(_api(settings), url.strip(), events, name)
    hook = done.webhook
    sent = [e for e in events if e not in done.refused]
    click.echo(f"{done.action} webhook {safe(hook.get('key'))} ({safe(hook.get('name'))}) sending {len(sent)} event "
               f"types to {safe(hook.get('url', url))}: {', '.join(sent)}")
    if done.refused:
        click.echo(f"warning: Partnero does not offer {', '.join(map(safe, done.refused))} to this program: not "
                   "subscribed (the mappings still apply them if they ever arrive)", err=True)
    for key in done.others:
        click.echo(f"warning: webhook {safe(key)} also sends to this URL (each delivery would arrive twice): "
                   f"`partnero-sync webhooks delete {safe(key)}` removes it", err=True)
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

    subscriptions.delete(_api(load_settings()), key)
    click.echo(f"deleted webhook {key}")
