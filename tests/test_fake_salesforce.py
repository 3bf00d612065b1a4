"""The Salesforce stand-in, driven through the real simple-salesforce client over verified TLS."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from tests.fakes.salesforce import MAX_COLLECTION_RECORDS, FakeSalesforce

TRANSACTION = "Partnero_Transaction__c"
PARTNER_ID = "Partnero_Partner_Id__c"


@pytest.fixture
def fake_salesforce(monkeypatch):
    """A running fake whose CA the process trusts (verification stays on)."""
    with FakeSalesforce() as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
        yield fake


@pytest.fixture
def connect(fake_salesforce):
    """Build Salesforce clients; their connection pools are closed after the test."""
    clients: list[Salesforce] = []

    def make(**kwargs) -> Salesforce:
        if not kwargs:
            kwargs = {"instance_url": fake_salesforce.instance_url,
                      "session_id": fake_salesforce.issue_session()}
        client = Salesforce(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.session.close()


@pytest.fixture
def sf(connect) -> Salesforce:
    """The SALESFORCE_INSTANCE_URL + SALESFORCE_SESSION_ID mode."""
    return connect()


def collection(sf: Salesforce, sobject: str, ext_field: str, records: list[dict], all_or_none=False):
    body = {"allOrNone": all_or_none,
            "records": [{"attributes": {"type": sobject}, **record} for record in records]}
    return sf.restful(f"composite/sobjects/{sobject}/{ext_field}", method="PATCH", json=body)


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.content[0]["errorCode"]


# ------------------------------------------------------------------ single records


def test_single_upsert_creates_then_updates(fake_salesforce, sf):
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe", "Email": "a@x.test"}) == 201
    created = fake_salesforce.get("Contact", PARTNER_ID, "ptn_1")
    assert created["Id"].startswith("003") and len(created["Id"]) == 18
    assert created["LastName"] == "Doe"

    response = sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"FirstName": "Jane"}, raw_response=True)
    assert response.status_code == 200  # API 46.0 and later answer an update with a body
    assert response.json() == {"id": created["Id"], "success": True, "errors": [], "created": False}
    updated = fake_salesforce.get("Contact", PARTNER_ID, "ptn_1")
    assert (updated["FirstName"], updated["LastName"], updated["Email"]) == ("Jane", "Doe", "a@x.test")
    assert len(fake_salesforce.records("Contact")) == 1
    assert fake_salesforce.count("upsert") == 2
    first = fake_salesforce.calls[0]
    assert (first.method, first.path, first.records, first.status) == (
        "PATCH", "/services/data/v59.0/sobjects/Contact/Partnero_Partner_Id__c/ptn_1", 1, 201)

    fetched = sf.Contact.get_by_custom_id(PARTNER_ID, "ptn_1")
    assert fetched["Id"] == created["Id"] and fetched["attributes"]["type"] == "Contact"
    assert sf.Contact.get(created["Id"])["FirstName"] == "Jane"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get_by_custom_id(PARTNER_ID, "ptn_unknown")


def test_external_ids_match_ignoring_case(fake_salesforce, sf):
    assert sf.Contact.upsert(f"{PARTNER_ID}/PTN_7", {"LastName": "Upper"}) == 201
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_7", {"LastName": "Lower"}) == 200
    assert [r["LastName"] for r in fake_salesforce.records("Contact")] == ["Lower"]


def test_update_before_api_46_answers_204(connect, fake_salesforce):
    old = connect(instance_url=fake_salesforce.instance_url, session_id=fake_salesforce.issue_session(),
                  version="45.0")
    assert old.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201
    assert old.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Roe"}) == 204


def test_single_upsert_validation_errors(fake_salesforce, sf):
    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"FirstName": "No last name"})
    assert missing.value.status == 400
    assert missing.value.content == [{"message": "Required fields are missing: [LastName]",
                                      "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]
    with pytest.raises(SalesforceMalformedRequest) as account:
        sf.Account.upsert("Partnero_Account_Id__c/acc_1", {"Website": "x.test"})
    assert account.value.content[0]["fields"] == ["Name"]
    with pytest.raises(SalesforceResourceNotFound) as unknown:
        sf.Nonexistent__c.upsert("Ext__c/1", {"Name": "x"})
    assert error_code(unknown) == "NOT_FOUND"
    assert fake_salesforce.records("Contact") == []


def test_allowed_fields_reject_unknown_ones(fake_salesforce, sf):
    fake_salesforce.define_object(TRANSACTION, fields=["Name", "Amount__c", "Partnero_Transaction_Id__c"],
                                  external_ids=["Partnero_Transaction_Id__c"])
    assert sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t1", {"Amount__c": 10}) == 201
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t2", {"Amont__c": 10})
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert "Amont__c" in exc.value.content[0]["message"]
    with pytest.raises(SalesforceResourceNotFound):
        sf.Partnero_Transaction__c.upsert("Amount__c/10", {"Name": "x"})  # not an external id


def test_more_than_one_match_is_a_300(fake_salesforce, sf):
    fake_salesforce.add("Contact", {"LastName": "A", "Email": "same@x.test"})
    fake_salesforce.add("Contact", {"LastName": "B", "Email": "same@x.test"})
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Contact.upsert("Email/same@x.test", {"LastName": "C"})


# ------------------------------------------------------------------ sObject Collections


def test_collection_of_200_with_bad_records_keeps_the_good_ones(fake_salesforce, sf):
    account_id = fake_salesforce.add("Account", {"Name": "Acme", "Partnero_Account_Id__c": "acc_1"})
    fake_salesforce.add("Contact", {"LastName": "Existing", PARTNER_ID: "ptn_5"})
    records = [{PARTNER_ID: f"ptn_{i}", "LastName": f"Partner {i}",
                "Account": {"Partnero_Account_Id__c": "acc_1"}} for i in range(200)]
    del records[17]["LastName"]
    records[42]["LastName"] = ""
    records[99]["Account"] = {"Partnero_Account_Id__c": "acc_missing"}

    results = collection(sf, "Contact", PARTNER_ID, records)

    assert len(results) == 200
    assert results[17] == {"success": False, "errors": [{
        "statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]",
        "fields": ["LastName"]}]}
    assert results[42]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert results[99] == {"success": False, "errors": [{
        "statusCode": "INVALID_FIELD",
        "message": "Foreign key external ID: acc_missing not found for field "
                   "Partnero_Account_Id__c in entity Account", "fields": []}]}
    good = [r for i, r in enumerate(results) if i not in (17, 42, 99)]
    assert all(r["success"] and r["errors"] == [] and r["id"].startswith("003") for r in good)
    assert results[5]["created"] is False and results[6]["created"] is True
    stored = fake_salesforce.records("Contact")
    assert len(stored) == 197
    assert {r["AccountId"] for r in stored} == {account_id}
    assert fake_salesforce.get("Contact", PARTNER_ID, "ptn_17") is None
    assert fake_salesforce.calls[-1].records == 200 and fake_salesforce.count("collections") == 1


def test_collection_of_201_is_refused_whole(fake_salesforce, sf):
    records = [{PARTNER_ID: f"ptn_{i}", "LastName": "X"} for i in range(MAX_COLLECTION_RECORDS + 1)]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        collection(sf, "Contact", PARTNER_ID, records)
    assert exc.value.status == 400
    assert error_code(exc) == "EXCEEDED_ID_LIMIT"
    assert fake_salesforce.records("Contact") == []


def test_collection_needs_the_type_attribute(fake_salesforce, sf):
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful(f"composite/sobjects/Contact/{PARTNER_ID}", method="PATCH",
                   json={"allOrNone": False, "records": [{PARTNER_ID: "ptn_1", "LastName": "X"}]})
    assert error_code(exc) == "INVALID_TYPE"


def test_a_field_the_object_lacks_refuses_the_whole_collection(fake_salesforce, sf):
    """Salesforce reads the body into sObjects first: one unknown column fails the call, not a record."""
    fake_salesforce.define_object("Contact", prefix="003", required=("LastName",),
                                  fields=["LastName", "Email", PARTNER_ID])
    with pytest.raises(SalesforceMalformedRequest) as exc:
        collection(sf, "Contact", PARTNER_ID, [{PARTNER_ID: "ptn_1", "LastName": "A"},
                                               {PARTNER_ID: "ptn_2", "LastName": "B", "Partnero_Status__c": "x"}])
    assert exc.value.status == 400
    assert exc.value.content == [{"message": "No such column 'Partnero_Status__c' on sobject of type Contact",
                                  "errorCode": "INVALID_FIELD"}]
    assert fake_salesforce.records("Contact") == []  # not even the good record


def test_a_value_of_the_wrong_type_refuses_the_whole_collection(fake_salesforce, sf):
    fake_salesforce.define_object(TRANSACTION, types={"Amount__c": "double"})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        collection(sf, TRANSACTION, "Partnero_Transaction_Id__c", [
            {"Partnero_Transaction_Id__c": "t1", "Amount__c": 12.5},
            {"Partnero_Transaction_Id__c": "t2", "Amount__c": "twelve"}])
    assert error_code(exc) == "JSON_PARSER_ERROR"
    assert "Cannot deserialize instance of double from VALUE_STRING" in exc.value.content[0]["message"]
    assert fake_salesforce.records(TRANSACTION) == []
    assert collection(sf, TRANSACTION, "Partnero_Transaction_Id__c",
                      [{"Partnero_Transaction_Id__c": "t3", "Amount__c": "12.50"}])[0]["success"]


def test_an_object_the_user_cannot_access_is_a_403_for_the_whole_call(fake_salesforce, sf):
    fake_salesforce.deny("Contact")
    with pytest.raises(SalesforceRefusedRequest) as exc:
        collection(sf, "Contact", PARTNER_ID, [{PARTNER_ID: "ptn_1", "LastName": "A"}])
    assert exc.value.status == 403 and error_code(exc) == "INSUFFICIENT_ACCESS"
    fake_salesforce.allow("Contact")
    assert collection(sf, "Contact", PARTNER_ID, [{PARTNER_ID: "ptn_1", "LastName": "A"}])[0]["success"]


def test_duplicate_external_ids_in_one_collection_fail_both(fake_salesforce, sf):
    results = collection(sf, "Contact", PARTNER_ID, [
        {PARTNER_ID: "ptn_1", "LastName": "A"}, {PARTNER_ID: "ptn_2", "LastName": "B"},
        {PARTNER_ID: "PTN_1", "LastName": "C"}])
    assert [r["success"] for r in results] == [False, True, False]
    assert results[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"


def test_all_or_none_rolls_everything_back(fake_salesforce, sf):
    fake_salesforce.add("Contact", {"LastName": "Before", PARTNER_ID: "ptn_1"})
    results = collection(sf, "Contact", PARTNER_ID, [
        {PARTNER_ID: "ptn_1", "LastName": "After"}, {PARTNER_ID: "ptn_2", "LastName": "New"},
        {PARTNER_ID: "ptn_3"}], all_or_none=True)
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK", "ALL_OR_NONE_OPERATION_ROLLED_BACK", "REQUIRED_FIELD_MISSING"]
    assert [r["LastName"] for r in fake_salesforce.records("Contact")] == ["Before"]
    assert fake_salesforce.get("Contact", PARTNER_ID, "ptn_2") is None


# ------------------------------------------------------------------ relationships by external id


def test_relationship_by_external_id(fake_salesforce, sf):
    fake_salesforce.define_object(TRANSACTION)
    fake_salesforce.relationships[(TRANSACTION, "Partnero_Partner__r")] = ("Contact", PARTNER_ID)
    contact = fake_salesforce.add("Contact", {"LastName": "Doe", PARTNER_ID: "ptn_1"})

    assert sf.Partnero_Transaction__c.upsert(
        "Partnero_Transaction_Id__c/t1",
        {"Amount__c": 12.5, "Partnero_Partner__r": {PARTNER_ID: "ptn_1"}}) == 201
    stored = fake_salesforce.get(TRANSACTION, "Partnero_Transaction_Id__c", "t1")
    assert stored["Partnero_Partner__c"] == contact
    assert "Partnero_Partner__r" not in stored
    assert stored["Id"].startswith("a01")

    results = collection(sf, TRANSACTION, "Partnero_Transaction_Id__c", [
        {"Partnero_Transaction_Id__c": "t2", "Partnero_Partner__r": {PARTNER_ID: "ptn_1"}},
        {"Partnero_Transaction_Id__c": "t3", "Partnero_Partner__r": {PARTNER_ID: "ptn_404"}}])
    assert results[0]["success"] is True
    assert results[1] == {"success": False, "errors": [{
        "statusCode": "INVALID_FIELD",
        "message": "Foreign key external ID: ptn_404 not found for field Partnero_Partner_Id__c "
                   "in entity Contact", "fields": []}]}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Partnero_Transaction__c.upsert("Partnero_Transaction_Id__c/t4",
                                          {"Partnero_Partner__r": {PARTNER_ID: "ptn_404"}})
    assert error_code(exc) == "INVALID_FIELD"
    assert len(fake_salesforce.records(TRANSACTION)) == 2


def test_relationship_target_is_inferred_from_the_external_id_field(fake_salesforce, sf):
    fake_salesforce.define_object(TRANSACTION)
    contact = fake_salesforce.add("Contact", {"LastName": "Doe", PARTNER_ID: "ptn_1"})
    assert sf.Partnero_Transaction__c.upsert(
        "Partnero_Transaction_Id__c/t1", {"Partnero_Partner__r": {PARTNER_ID: "ptn_1"}}) == 201
    assert fake_salesforce.get(TRANSACTION, "Partnero_Transaction_Id__c", "t1")["Partnero_Partner__c"] == contact


# ------------------------------------------------------------------ queries and limits


def test_query(fake_salesforce, sf):
    fake_salesforce.define_object(TRANSACTION)
    fake_salesforce.relationships[(TRANSACTION, "Partnero_Partner__r")] = ("Contact", PARTNER_ID)
    for i in range(5):
        fake_salesforce.add("Contact", {"LastName": f"L{i}", "FirstName": "Pat" if i % 2 else "Sam",
                                        PARTNER_ID: f"ptn_{i}", "Score__c": i})
    fake_salesforce.add(TRANSACTION, {"Partnero_Transaction_Id__c": "t1",
                                      "Partnero_Partner__r": {PARTNER_ID: "ptn_3"}})

    result = sf.query(f"SELECT Id, LastName FROM Contact WHERE {PARTNER_ID} = 'ptn_2'")
    assert result["totalSize"] == 1 and result["done"] is True
    record = result["records"][0]
    assert record["LastName"] == "L2"
    assert record["attributes"] == {"type": "Contact",
                                    "url": f"/services/data/v59.0/sobjects/Contact/{record['Id']}"}
    assert list(record) == ["attributes", "Id", "LastName"]

    pats = sf.query("SELECT LastName FROM Contact WHERE FirstName = 'pat' AND Score__c > 1 "
                    "ORDER BY Score__c DESC")
    assert [r["LastName"] for r in pats["records"]] == ["L3"]
    some = sf.query(f"SELECT {PARTNER_ID} FROM Contact WHERE LastName IN ('L0', 'L4', 'nobody') "
                    "ORDER BY LastName LIMIT 1")
    assert [r[PARTNER_ID] for r in some["records"]] == ["ptn_0"]
    assert sf.query("SELECT COUNT() FROM Contact WHERE LastName LIKE 'L%'")["totalSize"] == 5
    joined = sf.query(f"SELECT Partnero_Partner__r.{PARTNER_ID} FROM {TRANSACTION}")["records"][0]
    assert joined["Partnero_Partner__r"][PARTNER_ID] == "ptn_3"

    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT FROM WHERE")
    assert error_code(malformed) == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.query("SELECT Id FROM Nope__c")
    assert error_code(unknown) == "INVALID_TYPE"
    with pytest.raises(SalesforceMalformedRequest) as bad_limit:
        sf.query("SELECT Id FROM Contact LIMIT many")
    assert error_code(bad_limit) == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Id FROM Contact WHERE LastName = 'a' OR LastName = 'b'")


def test_query_all_follows_next_records_url(fake_salesforce, sf):
    fake_salesforce.query_batch_size = 4
    for i in range(10):
        fake_salesforce.add("Contact", {"LastName": f"L{i}"})
    first = sf.query("SELECT Id FROM Contact")
    assert (first["totalSize"], first["done"], len(first["records"])) == (10, False, 4)
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/")
    everything = sf.query_all("SELECT LastName FROM Contact")
    assert sorted(r["LastName"] for r in everything["records"]) == sorted(f"L{i}" for i in range(10))


def test_limits_count_down(fake_salesforce, sf):
    first = sf.limits()["DailyApiRequests"]
    second = sf.limits()["DailyApiRequests"]
    assert first["Max"] == 15000
    assert second["Remaining"] == first["Remaining"] - 1
    assert sf.api_usage["api-usage"].total == 15000  # from the Sforce-Limit-Info header

    fake_salesforce.api_remaining = 0
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Contact")
    assert exc.value.status == 403 and error_code(exc) == "REQUEST_LIMIT_EXCEEDED"


# ------------------------------------------------------------------ logins and sessions


def test_soap_login_with_security_token(fake_salesforce, connect):
    sf = connect(username=fake_salesforce.username, password=fake_salesforce.password,
                 security_token=fake_salesforce.security_token, domain=fake_salesforce.login_domain)
    assert sf.sf_instance == f"127.0.0.1:{fake_salesforce.port}"
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201
    assert fake_salesforce.count("login", status=200) == 1
    assert fake_salesforce.calls[0].path == "/services/Soap/u/59.0"

    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        connect(username=fake_salesforce.username, password="wrong",
                security_token=fake_salesforce.security_token, domain=fake_salesforce.login_domain)
    assert exc.value.code == "INVALID_LOGIN"


def test_login_session_keeps_the_default_domain(fake_salesforce, connect):
    session = fake_salesforce.login_session()
    sf = connect(username=fake_salesforce.username, password=fake_salesforce.password,
                 security_token=fake_salesforce.security_token, session=session)
    assert sf.domain == "login"
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
    sandbox = connect(username=fake_salesforce.username, consumer_key=fake_salesforce.consumer_key,
                      privatekey=fake_salesforce.jwt_private_key, domain="test",
                      session=fake_salesforce.login_session())
    assert sandbox.limits()["DailyApiRequests"]["Max"] == 15000


def test_jwt_bearer_login(fake_salesforce, connect):
    sf = connect(username=fake_salesforce.username, consumer_key=fake_salesforce.consumer_key,
                 privatekey=fake_salesforce.jwt_private_key, domain=fake_salesforce.login_domain)
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201
    assert fake_salesforce.calls[0].detail == "jwt-bearer"

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(SalesforceAuthenticationFailed) as bad_key:
        connect(username=fake_salesforce.username, consumer_key=fake_salesforce.consumer_key,
                privatekey=stranger.decode(), domain=fake_salesforce.login_domain)
    assert bad_key.value.code == "invalid_grant"
    with pytest.raises(SalesforceAuthenticationFailed) as bad_client:
        connect(username=fake_salesforce.username, consumer_key="someone-else",
                privatekey=fake_salesforce.jwt_private_key, domain=fake_salesforce.login_domain)
    assert bad_client.value.code == "invalid_client_id"


def test_client_credentials_and_password_grants(fake_salesforce, connect):
    sf = connect(consumer_key=fake_salesforce.consumer_key, consumer_secret=fake_salesforce.consumer_secret,
                 domain=fake_salesforce.login_domain)
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        connect(consumer_key=fake_salesforce.consumer_key, consumer_secret="wrong",
                domain=fake_salesforce.login_domain)
    assert exc.value.code == "invalid_client"

    password_grant = connect(username=fake_salesforce.username,
                             password=fake_salesforce.password + fake_salesforce.security_token,
                             consumer_key=fake_salesforce.consumer_key,
                             consumer_secret=fake_salesforce.consumer_secret,
                             domain=fake_salesforce.login_domain)
    assert password_grant.limits()["DailyApiRequests"]["Max"] == 15000
    assert [c.detail for c in fake_salesforce.calls if c.kind == "login"] == [
        "client_credentials", "client_credentials:invalid_client", "password"]


def test_expired_session_raises_in_session_id_mode(fake_salesforce, sf):
    sf.limits()
    assert fake_salesforce.expire_sessions() == 1
    with pytest.raises(SalesforceExpiredSession) as exc:
        sf.limits()
    assert exc.value.status == 401
    assert exc.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    fresh = Salesforce(instance_url=fake_salesforce.instance_url, session_id=fake_salesforce.issue_session())
    try:
        assert fresh.limits()["DailyApiRequests"]["Max"] == 15000
    finally:
        fresh.session.close()


def test_expired_session_logs_in_again_in_login_mode(fake_salesforce, connect):
    sf = connect(username=fake_salesforce.username, password=fake_salesforce.password,
                 security_token=fake_salesforce.security_token, domain=fake_salesforce.login_domain)
    old = sf.session_id
    fake_salesforce.expire_sessions()
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201  # 401, login, retry
    assert sf.session_id != old
    assert [(c.kind, c.status) for c in fake_salesforce.calls] == [
        ("login", 200), ("upsert", 401), ("login", 200), ("upsert", 201)]


def test_keep_alive_reuses_one_connection(fake_salesforce, sf):
    for _ in range(5):
        sf.limits()
    assert fake_salesforce.connections_accepted == 1


def test_a_missing_token_is_refused(fake_salesforce):
    response = requests.get(f"{fake_salesforce.instance_url}/services/data/v59.0/limits", timeout=5)
    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


# ------------------------------------------------------------------ failure switches


def test_outage_503(fake_salesforce, sf):
    fake_salesforce.outage = "503"
    with pytest.raises(SalesforceGeneralError) as exc:
        sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"})
    assert exc.value.status == 503 and error_code(exc) == "SERVER_UNAVAILABLE"
    fake_salesforce.outage = None
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201


def test_outage_refuse_then_recover_on_the_same_port(fake_salesforce, sf):
    sf.limits()  # a pooled keep-alive connection exists
    fake_salesforce.outage = "refuse"
    with pytest.raises(requests.exceptions.ConnectionError) as exc:
        sf.limits()
    assert "refused" in str(exc.value).lower()
    fake_salesforce.outage = None
    assert sf.limits()["DailyApiRequests"]["Max"] == 15000


def test_outage_drop_resets_connections(fake_salesforce, sf):
    sf.limits()
    fake_salesforce.outage = "drop"
    with pytest.raises(requests.exceptions.ConnectionError):
        sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"})
    assert fake_salesforce.records("Contact") == []
    fake_salesforce.outage = None
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "Doe"}) == 201


def test_fail_rate_per_call(fake_salesforce, sf):
    fake_salesforce.fail_with = "REQUEST_LIMIT_EXCEEDED"
    fake_salesforce.fail_rate = 1.0
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Contact")
    assert error_code(exc) == "REQUEST_LIMIT_EXCEEDED"
    fake_salesforce.fail_with = "SERVER_UNAVAILABLE"
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT Id FROM Contact")
    assert unavailable.value.status == 503
    fake_salesforce.fail_rate = 0
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0


def test_fail_rate_per_record_is_reproducible(fake_salesforce, sf):
    def run(prefix: str) -> list[bool]:
        fake_salesforce.reseed(7)
        records = [{PARTNER_ID: f"{prefix}{i}", "LastName": "X"} for i in range(40)]
        return [r["success"] for r in collection(sf, "Contact", PARTNER_ID, records)]

    fake_salesforce.fail_with = "UNABLE_TO_LOCK_ROW"
    fake_salesforce.fail_rate = 0.5
    first = run("a")
    assert 0 < first.count(False) < 40
    assert run("b") == first
    assert all(c.detail == "UNABLE_TO_LOCK_ROW" for c in fake_salesforce.calls if c.kind == "collections")
    stored = {r[PARTNER_ID] for r in fake_salesforce.records("Contact")}
    assert stored == {f"a{i}" for i, ok in enumerate(first) if ok} | {f"b{i}" for i, ok in enumerate(first) if ok}


def test_reject_chosen_records(fake_salesforce, sf):
    rule = fake_salesforce.reject(lambda record: record.get("Email", "").endswith("@blocked.test"),
                                  "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Email domain is blocked",
                                  fields=["Email"], sobject="Contact")
    results = collection(sf, "Contact", PARTNER_ID, [
        {PARTNER_ID: "ptn_1", "LastName": "A", "Email": "a@ok.test"},
        {PARTNER_ID: "ptn_2", "LastName": "B", "Email": "b@blocked.test"}])
    assert results[0]["success"] is True
    assert results[1]["errors"] == [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                     "message": "Email domain is blocked", "fields": ["Email"]}]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.upsert(f"{PARTNER_ID}/ptn_3", {"LastName": "C", "Email": "c@blocked.test"})
    assert error_code(exc) == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    fake_salesforce.unreject(rule)
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_3", {"LastName": "C", "Email": "c@blocked.test"}) == 201


def test_reject_a_limited_number_of_times(fake_salesforce, sf):
    fake_salesforce.reject(lambda record: True, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access",
                           times=1)
    with pytest.raises(SalesforceMalformedRequest):
        sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "A"})
    assert sf.Contact.upsert(f"{PARTNER_ID}/ptn_1", {"LastName": "A"}) == 201


def test_latency_slows_calls(fake_salesforce, sf):
    fake_salesforce.latency = 0.3
    started = time.monotonic()
    sf.limits()
    assert time.monotonic() - started >= 0.3


# ------------------------------------------------------------------ transport


def test_tls_is_verified(fake_salesforce, monkeypatch):
    url = f"{fake_salesforce.instance_url}/services/data"
    assert requests.get(url, timeout=5).status_code == 200  # trusted through REQUESTS_CA_BUNDLE
    assert requests.get(f"https://localhost:{fake_salesforce.port}/services/data", timeout=5).ok

    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=5)
    untrusting = Salesforce(instance_url=fake_salesforce.instance_url,
                            session_id=fake_salesforce.issue_session())
    try:
        with pytest.raises(requests.exceptions.SSLError):
            untrusting.limits()
    finally:
        untrusting.session.close()


def test_concurrent_clients(fake_salesforce):
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        client = Salesforce(instance_url=fake_salesforce.instance_url,
                            session_id=fake_salesforce.issue_session())
        try:
            for i in range(10):
                client.Contact.upsert(f"{PARTNER_ID}/w{n}_{i}", {"LastName": f"W{n}"})
            results = collection(client, "Contact", PARTNER_ID,
                                 [{PARTNER_ID: f"w{n}_c{i}", "LastName": "C"} for i in range(20)])
            assert all(r["success"] for r in results)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.session.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(fake_salesforce.records("Contact")) == 8 * 30
    assert fake_salesforce.count("upsert") == 80 and fake_salesforce.count("collections") == 8


def test_stops_cleanly_with_clients_still_connected(monkeypatch):
    before = {t for t in threading.enumerate()}
    fake = FakeSalesforce().start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
    session = requests.Session()  # keeps its connection open across the stop
    assert session.get(f"{fake.instance_url}/services/data", timeout=5).ok
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 5
    assert [t.name for t in threading.enumerate() if t not in before] == []
    session.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fake.port), timeout=2).close()
