"""Salesforce with several Partnero programs: one flush serves them all, each record with its own
program's mapping, ledger and currency, and one program's trouble stays its own. Through
simple-salesforce's real code path against the HTTPS stand-in, as tests/test_salesforce_sync.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from sync.cli import main
from sync.salesforce import org
from sync.store.org_checks import Verdict
from tests.conftest import salesforce_env
from tests.salesforce_orgs import set_up
from tests.test_salesforce_sync import password_login


def friends_mappings(settings, tmp_path: Path) -> Path:
    """friends' own mappings: its Contacts also write a field the org does not have."""
    directory = tmp_path / "friends-mappings"
    shutil.copytree(settings.mappings_dir, directory)
    path = directory / "partner.yml"
    path.write_text(path.read_text().replace("    Partnero_Status__c: data.status\n",
                                             "    Partnero_Status__c: data.status\n    Friends_Level__c: data.key\n"))
    return directory


def _program_env(settings, tmp_path: Path) -> dict[str, str]:
    """The variables of ``serve``'s two programs (and of ``settings``' database, Redis and
    mappings), for the CLI."""
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "MAPPINGS_DIR": str(settings.mappings_dir), "PARTNERO_PROGRAMS": "default,friends",
            "PARTNERO_DEFAULT_WEBHOOK_SECRET": settings.webhook_secrets[0],
            "PARTNERO_FRIENDS_WEBHOOK_SECRET": "friends-secret", "PARTNERO_FRIENDS_CURRENCY": "EUR",
            "PARTNERO_FRIENDS_MAPPINGS_DIR": str(tmp_path / "friends-mappings")}


def test_the_org_is_held_against_every_programs_mappings(settings, fake, tmp_path):
    from sync.mapping import load_mappings
    from sync.salesforce.client import SalesforceClient
    from sync.store.schema import RESERVED_TABLES

    shipped = load_mappings(settings.mappings_dir, RESERVED_TABLES)
    theirs = load_mappings(friends_mappings(settings, tmp_path), RESERVED_TABLES)
    client = SalesforceClient(password_login(set_up(fake)))
    assert org.check(client, shipped).verdict is Verdict.FITS
    fit = org.check(client, [shipped, theirs, shipped])
    assert fit.verdict is Verdict.MISFIT
    assert [(f.object, f.field) for f in fit.findings] == [("Contact", "Friends_Level__c")]
    assert fit.objects == ("Contact", "Account", "Partnero_Transaction__c")
    assert org.signature([shipped, shipped]) == org.signature(shipped) != org.signature([shipped, theirs])


def test_crm_check_names_a_field_only_one_programs_mappings_need(settings, fake, tmp_path):
    friends_mappings(settings, tmp_path)
    set_up(fake)
    env = {**salesforce_env(fake), **_program_env(settings, tmp_path)}
    checked = CliRunner().invoke(main, ["crm", "check", "--json"], env=env)
    assert checked.exit_code == 1, checked.output
    found = json.loads(checked.output)["findings"]
    assert [(f["object"], f["field"]) for f in found] == [("Contact", "Friends_Level__c")]
    assert "friends-mappings" in found[0]["source"]
