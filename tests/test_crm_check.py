"""``partnero-sync crm check`` against the HTTPS stand-in: simple-salesforce's real describe calls,
orgs fresh, partly set up, set up, with a conflicting type, a hidden field, or no way in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from sync.cli import main
from tests.conftest import salesforce_env
from tests.fakes.salesforce import FakeSalesforce
from tests.salesforce_orgs import set_up, set_up_contact

SHIPPED = Path(__file__).resolve().parents[1] / "mappings"
NO_SALESFORCE = dict.fromkeys(
    ("SALESFORCE_USERNAME", "SALESFORCE_PASSWORD", "SALESFORCE_SECURITY_TOKEN", "SALESFORCE_DOMAIN",
     "SALESFORCE_INSTANCE_URL", "SALESFORCE_SESSION_ID", "SALESFORCE_CONSUMER_KEY", "SALESFORCE_CONSUMER_SECRET",
     "SALESFORCE_PRIVATE_KEY", "SALESFORCE_PRIVATE_KEY_FILE"))
#: Every custom field and object the shipped mappings write (docs/salesforce.md's table).
CUSTOM = {
    ("Contact", "Partnero_Partner_Id__c"), ("Contact", "Partnero_Status__c"),
    ("Contact", "Partnero_Commission_Total__c"), ("Contact", "Partnero_Commission_Approved__c"),
    ("Contact", "Partnero_Commission_Pending__c"), ("Contact", "Partnero_Program__c"),
    ("Account", "Partnero_Customer_Key__c"), ("Account", "Partnero_Program__c"),
    ("Account", "Partnero_Email__c"), ("Account", "Partnero_Status__c"), ("Account", "Partnero_Partner__c"),
    ("Partnero_Transaction__c", None), ("Partnero_Transaction__c", "Partnero_Transaction_Key__c"),
    ("Partnero_Transaction__c", "Amount__c"), ("Partnero_Transaction__c", "Currency__c"),
    ("Partnero_Transaction__c", "Action__c"), ("Partnero_Transaction__c", "Status__c"),
    ("Partnero_Transaction__c", "Partnero_Customer__c"), ("Partnero_Transaction__c", "Partnero_Partner__c"),
    ("Partnero_Transaction__c", "Partnero_Program__c"),
}


@pytest.fixture
def fresh(monkeypatch):
    """An org as it comes: Contact and Account with their standard fields, nothing of ours."""
    with FakeSalesforce(fresh=True) as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
        yield fake


def check(fake: FakeSalesforce | None, *args: str, **env: str | None):
    login = salesforce_env(fake) if fake is not None else {}
    return CliRunner().invoke(main, ["crm", "check", *args],
                              env={**NO_SALESFORCE, "MAPPINGS_DIR": str(SHIPPED), **login, **env})


def reported(result) -> set[tuple[str, str | None]]:
    assert result.exit_code == 1, result.output
    return {(f["object"], f["field"]) for f in json.loads(result.output)["findings"]}


def test_a_fresh_org_does_not_fit_and_every_missing_piece_is_named(fresh):
    result = check(fresh)
    assert result.exit_code == 1, result.output
    for obj, name in CUSTOM:
        assert any(line.startswith(obj) and (name or "-") in line.split() for line in result.output.splitlines()), (
            obj, name, result.output)
    assert "object missing" in result.output and "20 problems" in result.output
    found = json.loads(check(fresh, "--json").output)
    assert found["fits"] is False and {(f["object"], f["field"]) for f in found["findings"]} == CUSTOM
    assert {f["problem"] for f in found["findings"]} == {"object missing", "field missing"}
    assert fresh.count("describe") == 6 and fresh.count("query") == 0  # two runs of three describes


def test_an_org_set_up_for_the_mappings_fits(fresh):
    result = check(set_up(fresh))
    assert result.exit_code == 0, result.output
    assert "the org fits the mappings (Contact, Account, Partnero_Transaction__c)" in result.output
    assert json.loads(check(fresh, "--json").output) == {
        "fits": True, "objects": ["Contact", "Account", "Partnero_Transaction__c"], "findings": []}


def test_the_default_stand_in_org_once_its_fields_are_described_fits(fake):
    assert check(set_up(fake)).exit_code == 0


def test_a_partly_set_up_org_is_told_only_what_it_lacks(fresh):
    set_up_contact(fresh)
    found = reported(check(fresh, "--json"))
    assert found == {(o, f) for o, f in CUSTOM if o != "Contact"}


def test_a_conflicting_field_type_is_reported_and_what_to_do(fresh):
    set_up(fresh)
    fresh.add_field("Partnero_Transaction__c", "Amount__c", "string", length=20)  # a text where a decimal goes
    result = check(fresh)
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "Amount__c" in line)
    assert "wrong type: it is a string field; the mapping sends a decimal number" in line
    assert "use a Number or Currency field" in line and "transaction.yml:51" in line


def test_a_field_hidden_from_the_integration_user_is_reported_and_refused_in_writes(fresh):
    set_up(fresh)
    fresh.hide_field("Contact", "Partnero_Status__c")
    result = check(fresh, "--json")
    found = json.loads(result.output)["findings"]
    assert [(f["object"], f["field"], f["problem"]) for f in found] == [
        ("Contact", "Partnero_Status__c", "field missing")]
    assert "field-level security" in found[0]["detail"]
    sf = Salesforce(instance_url=fresh.instance_url, session_id=fresh.issue_session())
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Contact.upsert("Partnero_Partner_Id__c/ptn_1", {"LastName": "Doe", "Partnero_Status__c": "active"})
    assert refused.value.content == [{"message": "No such column 'Partnero_Status__c' on sobject of type Contact",
                                      "errorCode": "INVALID_FIELD"}]


def test_a_field_the_user_can_read_but_not_edit(fresh):
    set_up(fresh)
    fresh.add_field("Account", "Partnero_Status__c", length=40, writable=False)
    found = json.loads(check(fresh, "--json").output)["findings"]
    assert [(f["field"], f["problem"]) for f in found] == [("Partnero_Status__c", "not writable")]
    sf = Salesforce(instance_url=fresh.instance_url, session_id=fresh.issue_session())
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Account.upsert("Partnero_Customer_Key__c/c1", {"Name": "N", "Partnero_Status__c": "x"})
    assert refused.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert fresh.get("Account", "Partnero_Customer_Key__c", "c1") is None


def test_a_required_field_the_mapping_never_fills(fresh):
    set_up(fresh)
    fresh.add_field("Contact", "Region__c", required=True)
    found = json.loads(check(fresh, "--json").output)["findings"]
    assert [(f["object"], f["field"], f["problem"]) for f in found] == [
        ("Contact", "Region__c", "required, never filled")]


def test_it_never_prints_record_data(fresh):
    set_up(fresh)
    fresh.add("Contact", {"LastName": "Secretsson", "Partnero_Partner_Id__c": "ptn_secret"})
    fresh.add_field("Contact", "Partnero_Status__c", "boolean")
    result = check(fresh)
    assert result.exit_code == 1 and "Secretsson" not in result.output and "ptn_secret" not in result.output


@pytest.mark.parametrize("env, words", [
    ({}, "Salesforce is not configured"),
    ({"SALESFORCE_PASSWORD": "wrong"}, "Salesforce refused the password login"),
])
def test_it_cannot_tell_without_a_login(fresh, env, words):
    result = check(fresh if env else None, **env)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_it_cannot_tell_without_access(fresh):
    set_up(fresh)
    fresh.deny("Account")
    result = check(fresh, "--json")
    assert result.exit_code == 2
    assert "cannot tell whether the org fits" in json.loads(result.output.split("\npartnero-sync:")[0])["cannot_tell"]


def test_help_explains_the_exit_statuses():
    result = CliRunner().invoke(main, ["crm", "check", "--help"])
    assert result.exit_code == 0 and "0 the org fits; 1 it does not" in result.output


def test_an_org_that_fits_takes_every_shipped_record_without_refusal(fresh, settings, redis_conn):
    """What check calls fitting is what the sync needs: a fresh org set up as check asks takes the
    three entities' records with no refusal."""
    from sync.partnero.samples import CUSTOMER, TRANSACTION
    from sync.services import Services
    from tests.test_salesforce_sync import deliver, partner, password_login
    from tests.warehouse_helpers import envelope

    assert check(set_up(fresh)).exit_code == 0
    services = Services.build(settings.with_overrides(salesforce=password_login(fresh)), redis_conn)
    deliver(services, partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER),
            envelope("transaction.created", "2026-03-14T10:15:31Z", **TRANSACTION))
    report = services.flusher().flush()
    assert (report.synced, report.failed) == (3, 0), report.summary()
    sale = fresh.get("Partnero_Transaction__c", "Partnero_Transaction_Key__c", TRANSACTION["key"])
    assert sale["Partnero_Partner__c"] == fresh.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")["Id"]


def test_an_expired_session_is_renewed_between_describes(fresh):
    from sync.salesforce.client import SalesforceClient
    from sync.salesforce.org import describes
    from tests.test_salesforce_sync import password_login

    client = SalesforceClient(password_login(set_up(fresh)))
    assert client.describe("Contact")["name"] == "Contact"
    fresh.expire_sessions()
    found = describes(client, ["Account", "Nothing__c"])
    assert found["Account"]["name"] == "Account" and found["Nothing__c"] is None
    assert fresh.count("login") == 2


def test_it_cannot_tell_while_salesforce_is_away(fresh):
    fresh.outage = "503"
    result = check(fresh)
    assert result.exit_code == 2 and "cannot tell whether the org fits" in result.output
