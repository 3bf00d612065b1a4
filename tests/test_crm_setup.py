"""``partnero-sync crm setup`` through the real CLI against the HTTPS stand-in's Metadata API: a
fresh org built until ``crm check`` passes and the shipped records go through, a second run that
changes nothing, a partly set-up org, a conflicting field, a user who may not deploy."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sync.cli import main
from tests.conftest import salesforce_env
from tests.salesforce_orgs import set_up, set_up_contact
from tests.test_crm_check import NO_SALESFORCE, SHIPPED, check


@pytest.fixture
def sf(fresh_org):
    from simple_salesforce import Salesforce

    client = Salesforce(instance_url=fresh_org.instance_url, session_id=fresh_org.issue_session())
    yield client
    client.session.close()
    if client._mdapi is not None:
        client._mdapi._client.transport.session.close()


def setup(fake, *args: str):
    env = {**NO_SALESFORCE, "MAPPINGS_DIR": str(SHIPPED), **(salesforce_env(fake) if fake else {})}
    return CliRunner().invoke(main, ["crm", "setup", *args], env=env)


def upserts(fake) -> int:
    return sum(1 for c in fake.calls if c.kind == "metadata" and c.detail == "upsertMetadata")


def test_dry_run_prints_the_plan_and_changes_nothing(fresh_org):
    result = setup(fresh_org, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("create object Partnero_Transaction__c (label 'Partnero Transaction'")
    assert "create field Contact.Partnero_Partner_Id__c: Text, length 255, External ID, Unique" in lines
    assert "create field Contact.Partnero_Commission_Total__c: Number, precision 18, scale 6" in lines
    assert ("create field Partnero_Transaction__c.Partnero_Partner__c: Lookup, lookup to Contact, child relationship "
            "name Partnero_Transaction_Partnero_Partner") in lines
    assert any(line.startswith("upsert permission set Partnero_Sync: Read, Create, Edit on Contact, Account, "
                               "Partnero_Transaction__c; Edit on 19 fields") for line in lines)
    assert upserts(fresh_org) == 0 and not fresh_org.metadata.components("CustomField")


def test_a_fresh_org_is_set_up_until_it_fits_and_takes_every_shipped_record(fresh_org, settings, redis_conn):
    from sync.partnero.samples import CUSTOMER, TRANSACTION
    from sync.services import Services
    from tests.test_salesforce_sync import deliver, partner, password_login
    from tests.warehouse_helpers import envelope

    assert check(fresh_org).exit_code == 1
    result = setup(fresh_org)
    assert result.exit_code == 0, result.output
    assert "  CustomObject Partnero_Transaction__c: created" in result.output
    assert "  PermissionSet Partnero_Sync: created" in result.output
    assert "  Partnero_Sync assigned to the logged-in user" in result.output
    assert "the org fits the mappings (Contact, Account, Partnero_Transaction__c)" in result.output
    # parents first, and never more than 10 components a call: 1 object, 10 + 6 fields, 1 set
    assert upserts(fresh_org) == 4
    assert check(fresh_org).exit_code == 0
    services = Services.build(settings.with_overrides(salesforce=password_login(fresh_org)), redis_conn)
    stream = []  # ten partners, each with a customer and a transaction
    for i in range(10):
        pid, cid, tid = f"ptn_{i:08x}", f"acct_{i:06d}", f"in_stream_{i}"
        rewards = [{**TRANSACTION["rewards"][0], "key": tid, "customer": cid, "partner": pid}]
        stream += [partner(id=pid, key=f"partner-{i}", email=f"partner{i}@example.com"),
                   envelope("customer.created", "2026-03-14T10:02:54Z", **{**CUSTOMER, "key": cid, "partner": pid}),
                   envelope("transaction.created", "2026-03-14T10:15:31Z",
                            **{**TRANSACTION, "key": tid, "customer": cid, "partner": pid, "rewards": rewards})]
    deliver(services, *stream)
    report = services.flusher().flush()
    assert (report.synced, report.failed) == (30, 0), report.summary()
    again = setup(fresh_org)
    assert again.exit_code == 0, again.output
    assert "nothing to change" in again.output and upserts(fresh_org) == 4


def test_a_partly_set_up_org_gets_only_what_it_lacks(fresh_org):
    set_up_contact(fresh_org)
    planned = setup(fresh_org, "--dry-run").output
    assert "create field Contact." not in planned and "create field Account.Partnero_Customer_Key__c" in planned
    result = setup(fresh_org)
    assert result.exit_code == 0, result.output
    assert "Contact.Partnero_Status__c" not in {c.rsplit(".", 1)[0] for c in fresh_org.metadata.components("CustomField")}
    assert not any(name.startswith("contact.") for name in fresh_org.metadata.components("CustomField"))


def test_a_conflicting_field_type_is_reported_and_never_changed(fresh_org):
    set_up(fresh_org)
    fresh_org.add_field("Partnero_Transaction__c", "Amount__c", "string", length=20)
    planned = setup(fresh_org, "--dry-run")
    assert "left alone, change it yourself: Partnero_Transaction__c.Amount__c: wrong type" in planned.output
    result = setup(fresh_org)
    assert result.exit_code == 1, result.output
    assert "wrong type: it is a string field" in result.output and upserts(fresh_org) == 0
    assert json.loads(check(fresh_org, "--json").output)["findings"][0]["field"] == "Amount__c"


def test_a_user_who_may_not_deploy_gets_one_sentence_and_exit_2(fresh_org):
    fresh_org.metadata.modify_metadata = False
    result = setup(fresh_org)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "partnero-sync: the Salesforce user may not deploy metadata (it needs the Modify Metadata Through "
        "Metadata API Functions or Modify All Data permission): ask an admin to run crm setup, or to deploy "
        "the package crm setup --sfdx DIR writes"]


def test_a_component_salesforce_refuses_is_reported_with_its_reason_and_the_rest_deployed(fresh_org, sf):
    md = sf.mdapi  # another lookup on Contact already holds the child relationship name setup plans
    md.CustomField.create([md.CustomField(fullName="Account.Other_Partner__c", label="Other", type="Lookup",
                                          referenceTo="Contact", relationshipName="Account_Partnero_Partner")])
    result = setup(fresh_org)
    assert result.exit_code == 1, result.output
    assert ("  CustomField Account.Partnero_Partner__c: refused: FIELD_INTEGRITY_EXCEPTION: There is already a "
            "Child Relationship named Account_Partnero_Partner on Contact.") in result.output
    assert "  PermissionSet Partnero_Sync: created" in result.output
    found = json.loads(check(fresh_org, "--json").output)["findings"]
    assert [(f["object"], f["field"], f["problem"]) for f in found] == [
        ("Account", "Partnero_Partner__c", "field missing")]


def test_without_a_login_it_cannot_tell():
    result = setup(None)
    assert result.exit_code == 2 and "Salesforce is not configured" in result.output


def test_sfdx_writes_the_plan_as_a_source_package_and_changes_nothing(fresh_org, tmp_path):
    import xml.etree.ElementTree as ET

    set_up_contact(fresh_org)
    result = setup(fresh_org, "--sfdx", str(tmp_path / "pkg"))
    assert result.exit_code == 0, result.output
    root = tmp_path / "pkg" / "force-app" / "main" / "default"
    assert (tmp_path / "pkg" / "sfdx-project.json").is_file()
    assert (root / "objects" / "Partnero_Transaction__c" / "Partnero_Transaction__c.object-meta.xml").is_file()
    assert not (root / "objects" / "Contact").exists()  # the org has Contact's fields already
    field = ET.parse(root / "objects" / "Account" / "fields" / "Partnero_Customer_Key__c.field-meta.xml").getroot()
    assert field.tag == "{http://soap.sforce.com/2006/04/metadata}CustomField"
    assert ET.parse(root / "permissionsets" / "Partnero_Sync.permissionset-meta.xml").getroot() is not None
    assert "sf project deploy start --source-dir" in result.output and upserts(fresh_org) == 0


def test_sfdx_without_a_login_writes_everything(tmp_path):
    result = setup(None, "--sfdx", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("*.field-meta.xml"))) == 19


def test_a_field_the_org_hides_is_granted_not_defined_again(fresh_org, sf):
    md = sf.mdapi  # a field an earlier deploy made, never granted: absent from the user's describe
    md.CustomField.create([md.CustomField(fullName="Contact.Partnero_Status__c", label="Status", type="Text",
                                          length=80)])
    planned = setup(fresh_org, "--dry-run").output
    assert "Contact.Partnero_Status__c:" not in planned and "grant edit Contact.Partnero_Status__c" in planned
    result = setup(fresh_org)
    assert result.exit_code == 0, result.output
    assert "CustomField Contact.Partnero_Status__c" not in result.output
    assert md.CustomField.read(["Contact.Partnero_Status__c"]).length == 80


def test_a_hidden_field_of_the_wrong_type_is_reported_not_changed(fresh_org, sf):
    md = sf.mdapi
    md.CustomField.create([md.CustomField(fullName="Account.Partnero_Status__c", label="Status", type="Checkbox",
                                          defaultValue="false")])
    result = setup(fresh_org)
    assert result.exit_code == 1, result.output
    assert "left alone, change it yourself: Account.Partnero_Status__c: wrong type: it is a boolean field" in (
        result.output)
    assert md.CustomField.read(["Account.Partnero_Status__c"]).type == "Checkbox"


def test_a_user_who_may_not_deploy_can_still_see_the_plan(fresh_org):
    fresh_org.metadata.modify_metadata = False
    result = setup(fresh_org, "--dry-run")
    assert result.exit_code == 0
    assert "create field Contact.Partnero_Partner_Id__c: Text, length 255, External ID, Unique" in result.output
    assert "could not read the org's field definitions: INSUFFICIENT_ACCESS" in result.output


def test_the_dry_run_example_in_the_docs_is_what_it_prints(fresh_org):
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "salesforce.md").read_text()
    block = page.split("### crm setup", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    shown = [line[2:] for line in block.rstrip().splitlines()]
    assert shown[-1].strip() == "…"  # the rest of the grants
    assert setup(fresh_org, "--dry-run").output.splitlines()[: len(shown) - 1] == shown[:-1]
