"""``crm setup``: the org given what the mappings need (the plan printed, deployed through the
Metadata API, or written as a Salesforce DX source package)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sync.cli.base import load_settings
from sync.cli.salesforce import crm, every_program_mappings, print_findings, stop
from sync.core.errors import SyncError
from sync.ops.terminal import safe

#: What a user who may not deploy metadata is told (the INSUFFICIENT_ACCESS fault).
NO_DEPLOY = ("the Salesforce user may not deploy metadata (it needs the Modify Metadata Through Metadata API "
             "Functions or Modify All Data permission): ask an admin to run crm setup, or to deploy the "
             "package crm setup --sfdx DIR writes")


@crm.command("setup")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--sfdx", "sfdx_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Write the plan as a Salesforce DX source package in DIR; change nothing in the org.")
def crm_setup(dry_run: bool, sfdx_dir: Path | None) -> None:
    """Create in the org what the mappings need and it lacks, then check it again.

    The plan comes from the mappings' `salesforce:` sections (every program's) held against the org: the custom
    objects and fields it lacks (types, lengths, External ID and Unique flags, lookups from the
    mappings) and the permission set Partnero_Sync (Read, Create, Edit on each object, Edit on
    each custom field), assigned to the logged-in user. A field that exists is never changed: one
    of the wrong type is reported. It deploys through the Metadata API as upserts, so running it
    again is safe, and then runs `crm check`.

    With --sfdx and no Salesforce login, the package holds everything (as for a fresh org).

    Exit status: 0 the org fits; 1 it does not (a component refused, or a conflict left); 2
    cannot tell or may not deploy (no login, no access, no permission to deploy metadata).
    """
    from sync.salesforce.contract import contract
    from sync.salesforce.setup import describe_plan, fresh_describes, plan

    settings = load_settings()
    needs = contract(every_program_mappings(settings))
    if not settings.salesforce.enabled and sfdx_dir is None:
        stop("Salesforce is not configured: set one group of SALESFORCE_ variables (docs/salesforce.md), then "
              "run crm setup again")
    client = _client(settings) if settings.salesforce.enabled else None
    describes = _read_org(client, needs) if client is not None else fresh_describes(needs)
    the_plan = plan(needs, describes)
    if client is not None and the_plan.fields:
        the_plan = plan(needs, describes, _hidden_fields(client, the_plan, dry_run or sfdx_dir is not None))
    if sfdx_dir is not None:
        _write_sfdx(the_plan, sfdx_dir)
        return
    if dry_run:
        for line in describe_plan(the_plan):
            click.echo(safe(line))
        return
    sys.exit(_deploy(client, needs, the_plan))


def _client(settings):
    from sync.salesforce.client import SalesforceClient

    return SalesforceClient(settings.salesforce)


def _read_org(client, needs) -> dict:
    from sync.salesforce.org import describes

    try:
        return describes(client, [o.name for o in needs.objects])
    except SyncError as exc:
        stop(f"cannot read the org: {exc}")


def _hidden_fields(client, the_plan, reading_only: bool) -> dict:
    """Of the fields planned, those the org has but hides from the integration user (read through
    the Metadata API), so that setup grants them instead of defining them again."""
    from sync.salesforce.client import METADATA_LIMIT

    names = [f.full_name for f in the_plan.fields]
    hidden: dict = {}
    try:
        for start in range(0, len(names), METADATA_LIMIT):
            hidden.update(client.read_metadata("CustomField", names[start:start + METADATA_LIMIT]))
    except SyncError as exc:
        if not reading_only:
            _refused(exc)
        click.echo(safe(f"(could not read the org's field definitions: {exc}; a field hidden from this user "
                        "shows as one to create)"), err=True)
    return hidden


def _refused(exc: SyncError) -> None:
    from sync.salesforce.client import CallRefused

    if isinstance(exc, CallRefused):
        stop(NO_DEPLOY if exc.code == "INSUFFICIENT_ACCESS" else f"Salesforce refused crm setup: {exc}")
    stop(f"could not finish crm setup: {exc}")


def _write_sfdx(the_plan, directory: Path) -> None:
    from sync.salesforce.sfdx import package

    for relative, text in package(the_plan).items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        click.echo(f"wrote {target}")
    click.echo(f"deploy it with: sf project deploy start --source-dir {directory / 'force-app'}")


def _deploy(client, needs, the_plan) -> int:
    """Deploy ``the_plan``, assign the permission set, check again; the exit status."""
    from sync.salesforce.client import METADATA_LIMIT
    from sync.salesforce.fit import findings
    from sync.salesforce.setup import PERMISSION_SET, components, describe_plan

    refused: set[str] = set()
    if the_plan.empty:
        click.echo("nothing to change: the org has every object and field crm setup can create")
    try:
        for kind, items in components(the_plan):
            items = [_without(item, refused) for item in items]
            for start in range(0, len(items), METADATA_LIMIT):
                refused |= _upsert(client, kind, items[start:start + METADATA_LIMIT])
        if the_plan.permission_set is not None and PERMISSION_SET not in refused:
            assigned = client.assign_permission_set(PERMISSION_SET)
            click.echo(f"  {PERMISSION_SET} {'assigned to' if assigned else 'already assigned to'} the logged-in user")
    except SyncError as exc:
        _refused(exc)
    for line in describe_plan(the_plan):
        if line.startswith("left alone"):
            click.echo(safe(line))
    click.echo("checking the org again:")
    found = findings(needs, _read_org(client, needs))
    print_findings(found, [o.name for o in needs.objects])
    return 1 if found or refused else 0


def _without(item: dict, refused: set[str]) -> dict:
    """A permission set's grants without the objects and fields Salesforce refused to create
    (a grant of a field the org lacks would fail the whole set); other components unchanged."""
    if "fieldPermissions" not in item:
        return item
    return {**item, "objectPermissions": [g for g in item["objectPermissions"] if g["object"] not in refused],
            "fieldPermissions": [g for g in item["fieldPermissions"]
                                 if g["field"] not in refused and g["field"].partition(".")[0] not in refused]}


def _upsert(client, kind: str, items: list[dict]) -> set[str]:
    """One upsertMetadata call, its components' outcomes printed; the full names refused."""
    refused = set()
    for result in client.upsert_metadata(kind, items):
        if result.success:
            click.echo(f"  {kind} {result.full_name}: {'created' if result.created else 'updated'}")
        else:
            refused.add(result.full_name)
            click.echo(safe(f"  {kind} {result.full_name}: refused: {result.code}: {result.message}"))
    return refused
