"""Partnero's REST API: ``backfill``, ``reconcile`` and ``webhooks list|register|delete``, each
for the program ``--program`` names or for every program with an API key (``sync.partnero.programs``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime

import click

from sync.cli.base import DATE, explain, load_settings, main, utc
from sync.core.errors import ConfigurationError, SyncError
from sync.ops.progress import StatusLine
from sync.ops.terminal import safe
from sync.settings import Program, Settings


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


def _program_option(what: str):
    return click.option("--program", "program_name", metavar="NAME", help=f"{what} of this program only (one "
                        "PARTNERO_PROGRAMS names). Default: every program with an API key; one without is skipped, "
                        "and said so.")


def _chosen(settings: Settings, name: str | None) -> tuple[Program, ...]:
    """The programs to act on (``sync.partnero.programs.choose``), telling on standard error
    which are skipped for want of an API key."""
    from sync.partnero.programs import UnknownProgram, choose

    try:
        chosen = choose(settings, name)
    except UnknownProgram as exc:
        raise click.BadParameter(str(exc), param_hint="--program") from None
    for line in chosen.skipped_lines():
        click.echo(f"partnero-sync: {line}", err=True)
    return chosen.programs


def _each(settings: Settings, programs: tuple[Program, ...], action: Callable[[Program], int]) -> int:
    """Run ``action`` (its exit status: 0 or 1) for each program; the worst status.

    One program's failure stays its own: with several programs, it is told on one line naming the
    program, and the others go on (a configuration error, such as a refused key, counts 2). With
    one, it is raised, for the command's usual line and exit status."""
    if len(programs) == 1:
        return action(programs[0])
    worst = 0
    for program in programs:
        try:
            worst = max(worst, action(program))
        except ConfigurationError as exc:
            click.echo(f"partnero-sync: program {program.name}: configuration error: {exc}", err=True)
            worst = 2
        except Exception as exc:
            message = explain(exc, settings)
            if message is None:
                raise
            click.echo(f"partnero-sync: program {program.name}: {safe(message)}", err=True)
            worst = max(worst, 1)
    return worst


def _exit(status: int) -> None:
    if status:
        sys.exit(status)


def _named(program: Program) -> str:
    """``program affiliate: `` in front of a line about a program PARTNERO_PROGRAMS names; nothing
    for the one program of a deployment that names none."""
    return f"program {program.name}: " if program.named else ""


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
@_program_option("Load the lists")
def backfill(entities: tuple[str, ...] | None, since: datetime | None, restart: bool, in_worker: bool,
             program_name: str | None) -> None:
    """Load what Partnero already holds: every partner, customer and transaction, through the
    same mappings as webhooks, into the warehouse, the ledger and Salesforce.

    Pages through each program's lists with its API key (PARTNERO_API_KEY, or
    PARTNERO_<NAME>_API_KEY for each program PARTNERO_PROGRAMS names; PARTNERO_API_URL, default
    https://api.partnero.com/v1), one program after the other, each in a run of its own, its
    objects applied as its deliveries. It asks for 250 objects a page (Partnero may give fewer: its
    pages are followed to the last its answers name). Each object is applied as if its
    webhook had arrived when the list was read: one older than what is held is left alone, one
    held as listed is not stored again (running it twice changes nothing), and the ledger books
    each reward once; a refunded transaction (deleted_at set) ends refunded, its commission booked
    and reversed. Safe while webhooks keep arriving. Salesforce writes are sent by the workers.

    Interrupted (Ctrl-C, a restart, an error), it carries on from its last completed page when
    run again with the same lists and --since. Prints progress, naming the program: the page,
    records, rate and time left. It honours Partnero's rate limits (429, Retry-After) and backs
    off when Partnero is away; an API key Partnero refuses stops that program's run at once (the
    other programs' go on).

    Exit status 0 when it finished and every object was applied; 1 when some could not be
    (each is recorded, with its reason, on its inbox row: see `status` and /ops), or when
    Partnero or the database could not be reached (run it again to carry on); 2 when an API key
    is missing or refused, or --entities names a list no mapping file loads.
    """
    from sync.services import Services

    settings = load_settings()
    programs = _chosen(settings, program_name)
    services = Services.build(settings)
    since = utc(since)
    _exit(_each(settings, programs, lambda program: _backfill_program(services, program, entities, since,
                                                                      restart, in_worker)))


def _backfill_program(services, program: Program, entities: tuple[str, ...] | None, since: datetime | None,
                      restart: bool, in_worker: bool) -> int:
    """Start or carry on ``program``'s backfill: here, or queued on a worker; its exit status."""
    from sync.partnero.api import PartneroApi
    from sync.partnero.backfill import Backfill
    from sync.partnero.programs import mappings_of

    filler = Backfill(services, PartneroApi.of(program, clock=services.clock), program=program.name,
                      mappings=mappings_of(services, program.name))
    run = filler.prepare(entities, since, restart=restart)
    called = filler.name(run.id)
    if run.next_page > 1 or run.entity != run.entities[0]:
        click.echo(f"{called}: carrying on from {run.entity} page {run.next_page} "
                   f"({run.records:,} records done before; --restart starts again)")
    if in_worker:
        filler.runs.queue(run.id)
        job_id = services.queue.enqueue_backfill(run.id, f"{called}: {', '.join(run.entities)}")
        click.echo(f"{called} queued on a worker (job {job_id}); follow it in the dashboard (/rq) "
                   "or with `partnero-sync status`")
        return 0
    _backfill_here(filler, run, salesforce=services.processor.outbox is not None)
    return 0


def _backfill_here(filler, run, salesforce: bool) -> None:
    """Run the backfill ``run`` in this process, printing its progress and what it did; exit
    status 1 when interrupted (every program's backfill stops), ``SyncError`` when some objects
    could not be applied. ``salesforce``: the mappings write to Salesforce."""
    line = StatusLine(every=10)  # a line every ten seconds in a log
    called = filler.name(run.id)
    try:
        run = filler.run(run, on_page=lambda progress: line.show(progress.line()))
    except KeyboardInterrupt:
        click.echo("", err=True)
        stopped = filler.runs.get(run.id)
        click.echo(f"{called} interrupted at {stopped.entity} page {stopped.next_page}; run the same "
                   "command again to carry on from there", err=True)
        sys.exit(1)
    line.end()
    click.echo(f"{called} finished: {run.records:,} records, {run.applied:,} applied, "
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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON: program, listed, drift "
              "[{entity, key, kind, fields, reason?}], counts, fixed, failed, left; a list of them, one per "
              "program, when PARTNERO_PROGRAMS is set.")
@_program_option("Compare the lists and records")
def reconcile(entities: tuple[str, ...] | None, fix: bool, as_json: bool, program_name: str | None) -> None:
    """Compare Partnero's lists with the warehouse and the ledger, and report the drift: each
    program's lists (read with its API key) with its own records, one program after the other.

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
    or the database could not be reached; 2 when an API key is missing or refused, or --entities
    names a list no mapping file loads.
    """
    from sync.services import Services

    settings = load_settings()
    programs = _chosen(settings, program_name)
    services = Services.build(settings)
    reports: list = []
    status = _each(settings, programs, lambda program: _reconcile_program(services, program, entities, fix,
                                                                          as_json, reports))
    if as_json and (reports or settings.named_programs):
        documents = [report.as_dict() for report in reports]
        click.echo(json.dumps(documents if settings.named_programs else documents[0], indent=2))
    _exit(status)


def _reconcile_program(services, program: Program, entities: tuple[str, ...] | None, fix: bool, as_json: bool,
                       reports: list) -> int:
    """Reconcile ``program``, adding its report to ``reports`` (and printing it, unless ``as_json``);
    exit status 1 when something drifts (or could not be corrected)."""
    from sync.partnero.api import PartneroApi
    from sync.partnero.programs import mappings_of
    from sync.partnero.reconcile import Reconcile, render

    checker = Reconcile(services, PartneroApi.of(program, clock=services.clock), program=program.name,
                        mappings=mappings_of(services, program.name))
    line = StatusLine(err=True)  # on a terminal only

    def reading(entity: str, page: int, last_page: int | None) -> None:
        line.show(f"{_named(program)}reading {entity}: page {page}" + (f" of {last_page}" if last_page else ""))

    report = checker.run(entities, fix=fix, on_page=None if as_json else reading)
    line.end(keep=False)
    reports.append(report)
    if not as_json:
        click.echo((f"program {program.name}:\n" if program.named else "") + render(report, fixed=fix)
                   + ("\n" if program.named else ""))
    return 1 if report.failed or report.left or (report.drifts and not fix) else 0


@main.group()
def webhooks() -> None:
    """Partnero's webhook subscriptions of each program: list them, point one at the receiver,
    delete one.

    They call Partnero's REST API with each program's API key (PARTNERO_API_KEY, or
    PARTNERO_<NAME>_API_KEY for each program PARTNERO_PROGRAMS names: Integration -> API in
    Partnero; one key belongs to one program), at PARTNERO_API_URL (default
    https://api.partnero.com/v1); --program NAME for one program only, else every program with a
    key. Exit status 2 when a key is not set or Partnero refuses it; 1 when Partnero cannot be
    reached or refuses the call.
    """


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print the subscriptions as JSON (program, key, name, url, is_active, events).")
@_program_option("List the subscriptions")
def webhooks_list(as_json: bool, program_name: str | None) -> None:
    """List each program's webhook subscriptions: key, name, URL, whether active, and events.

    Signing secrets are never shown here: `webhooks register` prints the one of the subscription
    it creates or updates. Exit status 2 when an API key is not set or Partnero refuses it;
    1 when Partnero cannot be reached.
    """
    from sync.partnero import webhooks as subscriptions
    from sync.partnero.api import PartneroApi

    settings = load_settings()
    shown: list[dict] = []

    def one(program: Program) -> int:
        hooks = PartneroApi.of(program).webhooks()
        shown.extend({"program": program.name, **subscriptions.shown(h)} for h in hooks)
        if not as_json:
            heading = f"program {program.name}:\n" if program.named else ""
            click.echo(heading + subscriptions.render(hooks) + ("\n" if program.named else ""))
        return 0

    status = _each(settings, _chosen(settings, program_name), one)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
    _exit(status)


@webhooks.command("register")
@click.option("--url", required=True, metavar="URL",
              help="The web process's public URL, as Partnero will reach it: https://your-app.example.com "
                   "(each program's receiver path is added to it).")
@click.option("--name", help="The subscription's name in Partnero (default: the name it has, else partnero-sync).")
@_program_option("Register the subscription")
def webhooks_register(url: str, name: str | None, program_name: str | None) -> None:
    """Subscribe each program's receiver to exactly the event types its mapping files handle.

    Its receiver is URL/webhooks/partnero/NAME for a program PARTNERO_PROGRAMS names, and
    URL/webhooks/partnero for the one program of a deployment that names none (a URL that
    already ends in /webhooks/partnero is taken as that). Run it when deploying, and again after a
    mapping file gained or lost an event type. When a subscription already sends to the receiver
    it is updated (events, name, made active) instead of a second one being created, so running it
    twice is harmless. Event types Partnero refuses (not offered to the program) are left out,
    with a warning. Prints each program's signing secret once, as the line to set where the web
    process runs (PARTNERO_WEBHOOK_SECRET=…, or PARTNERO_<NAME>_WEBHOOK_SECRET=…; never logged),
    and says whether that variable holds it already. Warns when URL is not https. Exit status 2
    when the mapping files have problems, URL is not an http(s) URL, or an API key is not set or
    refused; 1 when Partnero cannot be reached or refuses the call.
    """
    from sync.partnero import webhooks as subscriptions

    settings = load_settings()
    try:
        warnings = subscriptions.check_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    programs = _chosen(settings, program_name)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    _exit(_each(settings, programs, lambda program: _register(program, url, name)))


def _register(program: Program, url: str, name: str | None) -> int:
    """Point ``program``'s subscription at its receiver, and print its secret as the variable to set."""
    from sync.mapping import load_mappings
    from sync.partnero import webhooks as subscriptions
    from sync.partnero.api import PartneroApi
    from sync.store.schema import RESERVED_TABLES

    events = sorted(load_mappings(program.mappings_dir, RESERVED_TABLES).events)
    target = subscriptions.receiver_url(url, program)
    done = subscriptions.register(PartneroApi.of(program), target, events, name)
    hook, named = done.webhook, _named(program)
    sent = [e for e in events if e not in done.refused]
    click.echo(f"{named}{done.action} webhook {safe(hook.get('key'))} ({safe(hook.get('name'))}) sending {len(sent)} "
               f"event types to {safe(hook.get('url', target))}: {', '.join(sent)}")
    if done.refused:
        click.echo(f"warning: {named}Partnero does not offer {', '.join(map(safe, done.refused))} to this program: "
                   "not subscribed (the mappings still apply them if they ever arrive)", err=True)
    for key in done.others:
        click.echo(f"warning: {named}webhook {safe(key)} also sends to this URL (each delivery would arrive twice): "
                   f"`partnero-sync webhooks delete {safe(key)}` removes it", err=True)
    _show_secret(program, done.secret)
    return 0


def _show_secret(program: Program, secret: str | None) -> None:
    """The subscription's signing secret as the line that sets ``program``'s variable, checked
    against the secrets that variable holds now."""
    variable = program.variable("WEBHOOK_SECRET")
    if secret is None:
        click.echo(f"{_named(program)}Partnero's answer holds no signing secret: the one this subscription had stays "
                   f"valid (keep {variable} as it is)")
        return
    click.echo(f"{_named(program)}its signing secret, for the web process's environment (shown here only):")
    click.echo(f"{variable}={secret}")
    if secret in program.webhook_secrets:
        click.echo(f"({variable} holds it already)")
    elif program.webhook_secrets:
        click.echo("(while deliveries signed with the secret set now may still arrive, set both, the new one "
                   "first, separated by a comma)")


@webhooks.command("delete")
@click.argument("key")
@_program_option("Look for the subscription")
def webhooks_delete(key: str, program_name: str | None) -> None:
    """Delete the webhook subscription KEY (as `webhooks list` shows it): Partnero stops sending
    its deliveries. Without --program, it is deleted from whichever program has it. Exit status 1
    when no program has such a subscription.
    """
    from sync.partnero import webhooks as subscriptions
    from sync.partnero.api import PartneroApi

    settings = load_settings()
    programs = _chosen(settings, program_name)
    deleted = []

    def one(program: Program) -> int:
        try:
            subscriptions.delete(PartneroApi.of(program), key)
        except subscriptions.NoSuchWebhook:
            if len(programs) == 1:
                raise
            return 0
        deleted.append(program.name)
        click.echo(f"deleted webhook {key}" + (f" of program {program.name}" if program.named else ""))
        return 0

    status = _each(settings, programs, one)
    if not deleted and not status:
        raise SyncError(f"Partnero has no webhook with key {key!r} in programs {', '.join(p.name for p in programs)} "
                        "(`partnero-sync webhooks list` shows them)")
    _exit(status)
