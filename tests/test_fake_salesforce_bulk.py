"""The Salesforce stand-in's Bulk API 2.0 ingest, driven by simple-salesforce's real bulk2 client
and by raw requests over verified TLS (tests/fakes/salesforce_bulk.py says where each shape is
grounded)."""

from __future__ import annotations

import csv
import io
import time

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession

from tests.fakes.salesforce import FakeSalesforce

PARTNER_ID = "Partnero_Partner_Id__c"
TRANSACTION = "Partnero_Transaction__c"
WAIT = 0.05  # simple-salesforce's first sleep and poll interval, seconds


@pytest.fixture
def fake(monkeypatch):
    with FakeSalesforce() as running:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", running.ca_bundle)
        running.bulk.processing_delay = 0.01
        yield running


@pytest.fixture
def sf(fake):
    client = Salesforce(instance_url=fake.instance_url, session_id=fake.issue_session())
    yield client
    client.session.close()


class Raw:
    """Bulk API 2.0 over plain requests, as a client without a library would speak it."""

    def __init__(self, fake: FakeSalesforce, version: str = "59.0"):
        self.fake, self.session = fake, requests.Session()
        self.base = f"{fake.instance_url}/services/data/v{version}/jobs/ingest"
        self.headers = {"Authorization": f"Bearer {fake.issue_session()}"}

    def call(self, method: str, path: str = "", **kw) -> requests.Response:
        return self.session.request(method, self.base + path, headers={**self.headers, **kw.pop("headers", {})},
                                    **kw)

    def create(self, **body) -> dict:
        body = {"object": "Contact", "operation": "insert", **body}
        response = self.call("POST", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def upload(self, job_id: str, text: str) -> requests.Response:
        return self.call("PUT", f"/{job_id}/batches", data=text.encode(), headers={"Content-Type": "text/csv"})

    def close(self, job_id: str, state: str = "UploadComplete") -> requests.Response:
        return self.call("PATCH", f"/{job_id}", json={"state": state})

    def info(self, job_id: str) -> dict:
        return self.call("GET", f"/{job_id}").json()

    def results(self, job_id: str, which: str) -> list[list[str]]:
        response = self.call("GET", f"/{job_id}/{which}")
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/csv")
        return list(csv.reader(io.StringIO(response.text)))

    def run(self, text: str, **body) -> dict:
        job = self.create(**body)
        assert self.upload(job["id"], text).status_code == 201
        assert self.close(job["id"]).status_code == 200
        self.fake.bulk.wait(job["id"])
        return self.info(job["id"])


@pytest.fixture
def raw(fake):
    client = Raw(fake)
    yield client
    client.session.close()


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------ simple-salesforce's bulk2


def test_bulk2_upsert_through_simple_salesforce(fake, sf):
    fake.add("Contact", {"LastName": "Before", "Email": "keep@x.test", PARTNER_ID: "ptn_0"})
    records = [{PARTNER_ID: "ptn_0", "LastName": "After", "Email": ""},
               {PARTNER_ID: "ptn_1", "LastName": "New", "Email": "n@x.test"},
               {PARTNER_ID: "ptn_2", "LastName": "", "Email": "x@x.test"}]

    [summary] = sf.bulk2.Contact.upsert(records=records, external_id_field=PARTNER_ID, wait=WAIT)

    assert summary["numberRecordsProcessed"] == 3 and summary["numberRecordsFailed"] == 1
    job_id = summary["job_id"]
    assert job_id.startswith("750") and len(job_id) == 18
    assert fake.get("Contact", PARTNER_ID, "ptn_0")["LastName"] == "After"
    assert fake.get("Contact", PARTNER_ID, "ptn_0")["Email"] == "keep@x.test"  # empty leaves it unchanged
    assert fake.get("Contact", PARTNER_ID, "ptn_1")["Email"] == "n@x.test"
    assert fake.get("Contact", PARTNER_ID, "ptn_2") is None

    successful = _rows(sf.bulk2.Contact.get_successful_records(job_id))
    assert [(r[PARTNER_ID], r["sf__Created"]) for r in successful] == [("ptn_0", "false"), ("ptn_1", "true")]
    assert successful[1]["sf__Id"] == fake.get("Contact", PARTNER_ID, "ptn_1")["Id"]
    [failed] = _rows(sf.bulk2.Contact.get_failed_records(job_id))
    assert failed["sf__Id"] == ""
    assert failed["sf__Error"] == "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    assert failed[PARTNER_ID] == "ptn_2"
    assert _rows(sf.bulk2.Contact.get_unprocessed_records(job_id)) == []


def test_bulk2_update_and_delete_by_id(fake, sf):
    first = fake.add("Contact", {"LastName": "One"})
    second = fake.add("Contact", {"LastName": "Two"})

    [updated] = sf.bulk2.Contact.update(records=[{"Id": first, "LastName": "Uno"},
                                                 {"Id": "003Hs0000000999AAA", "LastName": "Gone"}], wait=WAIT)
    assert updated["numberRecordsFailed"] == 1
    assert fake.get_by_id(first)["LastName"] == "Uno"
    [failed] = _rows(sf.bulk2.Contact.get_failed_records(updated["job_id"]))
    assert failed["sf__Error"] == "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--"

    [deleted] = sf.bulk2.Contact.delete(records=[{"Id": second}], wait=WAIT)
    assert deleted["numberRecordsFailed"] == 0
    assert fake.get_by_id(second) is None
    [row] = _rows(sf.bulk2.Contact.get_successful_records(deleted["job_id"]))
    assert (row["sf__Id"], row["sf__Created"]) == (second, "false")


def test_a_failed_job_raises_in_simple_salesforce(fake, sf):
    fake.bulk.fail_next("InvalidBatch : Field name not found : Foo__c")
    with pytest.raises(Exception, match="InvalidBatch : Field name not found : Foo__c"):
        sf.bulk2.Contact.insert(records=[{"LastName": "A"}], wait=WAIT)
    assert fake.records("Contact") == []


# ------------------------------------------------------------------ job info shapes and states


def test_create_answers_the_job_open(fake, raw):
    job = raw.create(operation="upsert", externalIdFieldName=PARTNER_ID)
    assert list(job) == ["id", "operation", "object", "createdById", "createdDate", "systemModstamp",
                         "state", "externalIdFieldName", "concurrencyMode", "contentType", "apiVersion",
                         "contentUrl", "lineEnding", "columnDelimiter"]
    assert job["state"] == "Open" and job["object"] == "Contact" and job["operation"] == "upsert"
    assert job["createdById"] == fake.user_id and job["apiVersion"] == 59.0
    assert job["contentUrl"] == f"services/data/v59.0/jobs/ingest/{job['id']}/batches"
    assert (job["lineEnding"], job["columnDelimiter"], job["concurrencyMode"]) == ("LF", "COMMA", "Parallel")
    assert job["createdDate"].endswith(".000+0000")

    before = raw.info(job["id"])
    assert before["jobType"] == "V2Ingest" and "numberRecordsProcessed" not in before
    assert raw.upload(job["id"], f"{PARTNER_ID},LastName\nptn_1,Doe\n").status_code == 201
    after = raw.info(job["id"])
    assert (after["numberRecordsProcessed"], after["numberRecordsFailed"]) == (0, 0)
    assert after["contentUrl"] == job["contentUrl"]


def test_state_walk_and_the_patch_answer(fake, raw):
    job = raw.create()
    raw.upload(job["id"], "LastName\nDoe\n")
    closed = raw.close(job["id"])
    assert closed.status_code == 200
    assert list(closed.json()) == ["id", "operation", "object", "createdById", "createdDate",
                                   "systemModstamp", "state", "concurrencyMode", "contentType", "apiVersion"]
    assert closed.json()["state"] == "UploadComplete"
    assert fake.bulk.wait(job["id"]) == "JobComplete"
    done = raw.info(job["id"])
    assert "contentUrl" not in done and "errorMessage" not in done
    assert (done["numberRecordsProcessed"], done["numberRecordsFailed"], done["retries"]) == (1, 0, 0)
    for key in ("totalProcessingTime", "apiActiveProcessingTime", "apexProcessingTime"):
        assert isinstance(done[key], int)


def test_invalid_transitions(fake, raw):
    job = raw.create()
    raw.upload(job["id"], "LastName\nDoe\n")
    raw.close(job["id"])
    fake.bulk.wait(job["id"])

    again = raw.close(job["id"])
    assert again.status_code == 400 and again.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    abort = raw.close(job["id"], "Aborted")
    assert abort.status_code == 400
    assert abort.json() == [{"errorCode": "INVALIDJOBSTATE", "message": "Aborting already Completed Job not allowed"}]
    upload = raw.upload(job["id"], "LastName\nLate\n")
    assert upload.status_code == 400 and upload.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    missing = raw.call("GET", "/750Hs0000000999AAA")
    assert missing.status_code == 404
    assert missing.json() == [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    assert raw.call("POST", f"/{job['id']}").status_code == 405


def test_an_aborted_job_leaves_its_rows_unprocessed(fake, raw):
    job = raw.create()
    raw.upload(job["id"], "LastName\nA\nB\n")
    aborted = raw.close(job["id"], "Aborted")
    assert aborted.json()["state"] == "Aborted"
    assert raw.results(job["id"], "unprocessedrecords") == [["LastName"], ["A"], ["B"]]
    assert raw.results(job["id"], "successfulResults") == [["sf__Id", "sf__Created", "LastName"]]
    assert fake.records("Contact") == []


def test_results_wait_for_a_final_state(fake, raw):
    fake.bulk.hold()
    job = raw.create()
    raw.upload(job["id"], "LastName\nA\n")
    raw.close(job["id"])
    early = raw.call("GET", f"/{job['id']}/successfulResults")
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    fake.bulk.release()
    assert fake.bulk.wait(job["id"]) == "JobComplete"


def test_held_jobs_stay_until_released(fake, raw):
    fake.bulk.hold()
    job = raw.create()
    raw.upload(job["id"], "LastName\nA\n")
    raw.close(job["id"])
    time.sleep(0.3)
    assert raw.info(job["id"])["state"] == "UploadComplete"
    assert fake.records("Contact") == []
    assert fake.bulk.jobs()[0]["state"] == "UploadComplete"
    fake.bulk.release()
    assert fake.bulk.wait(job["id"]) == "JobComplete"
    assert [r["LastName"] for r in fake.records("Contact")] == ["A"]


def test_delete_a_job(fake, raw):
    job = raw.create()
    refused = raw.call("DELETE", f"/{job['id']}")
    assert refused.status_code == 400
    assert refused.json()[0] == {"errorCode": "API_ERROR", "message": "Error encountered when deleting "
                                                                       "the job because the job is not terminated"}
    raw.close(job["id"], "Aborted")
    assert raw.call("DELETE", f"/{job['id']}").status_code == 204
    assert raw.call("GET", f"/{job['id']}").status_code == 404


def test_list_pages_with_a_next_records_url(fake, raw):
    fake.bulk.list_page = 2
    ids = [raw.create()["id"] for _ in range(3)]
    first = raw.call("GET").json()
    assert first["done"] is False and [j["id"] for j in first["records"]] == ids[:2]
    assert first["records"][0]["jobType"] == "V2Ingest" and "contentUrl" not in first["records"][0]
    follow = raw.session.get(fake.instance_url + first["nextRecordsUrl"], headers=raw.headers).json()
    assert follow == {"done": True, "records": follow["records"], "nextRecordsUrl": None}
    assert [j["id"] for j in follow["records"]] == ids[2:]


# ------------------------------------------------------------------ create refusals and limits


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"object": "Nope__c"}, 400, "INVALIDENTITY"),
    ({"operation": "merge"}, 400, "INVALIDJOB"),
    ({"operation": "upsert"}, 400, "INVALIDJOB"),
    ({"operation": "upsert", "externalIdFieldName": "Hidden__c"}, 400, "INVALIDJOB"),
    ({"lineEnding": "CR"}, 400, "INVALIDJOB"),
    ({"columnDelimiter": "SPACE"}, 400, "INVALIDJOB"),
    ({"object": "Account"}, 403, "INSUFFICIENT_ACCESS"),
])
def test_create_refusals(fake, raw, body, status, code):
    fake.define_object("Strict__c", fields=["Name", "Ext__c"], external_ids=["Ext__c"])
    fake.deny("Account")
    response = raw.call("POST", json={"object": "Strict__c", "operation": "insert", **body})
    assert response.status_code == status, response.text
    assert response.json()[0]["errorCode"] == code


def test_upsert_without_external_id_says_so(fake, raw):
    response = raw.call("POST", json={"object": "Contact", "operation": "upsert"})
    assert response.json()[0]["message"] == ("InvalidJob : External ID was blank for Contact. An External "
                                             "ID must be specified for upsert.")


def test_the_upload_size_limit(fake, raw):
    fake.bulk.max_upload_base64 = 400  # base64 of 300 raw bytes
    job = raw.create()
    assert raw.upload(job["id"], "LastName\n" + "A\n" * 140).status_code == 201  # 289 bytes
    assert raw.upload(job["id"], "LastName\n").status_code == 201  # 298 in all: base64 400
    over = raw.upload(job["id"], "LastName\nB\n")  # 309 in all: base64 412
    assert over.status_code == 400
    assert over.json() == [{"errorCode": "CLIENTINPUTERROR",
                            "message": "Failed to read request. Exceeded max size limit of 400"}]
    assert fake.bulk.jobs()[0]["uploads"] == 2


# ------------------------------------------------------------------ rows as records


def test_csv_semantics(fake, raw):
    fake.define_object(TRANSACTION, types={"Amount__c": "double", "Paid__c": "boolean",
                                           "Day__c": "date", "At__c": "datetime"})
    fake.relationships[(TRANSACTION, "Partnero_Partner__r")] = ("Contact", PARTNER_ID)
    contact = fake.add("Contact", {"LastName": "Doe", PARTNER_ID: "ptn_1"})
    fake.add(TRANSACTION, {"Tx__c": "t1", "Note__c": "old", "Amount__c": 1})
    text = ("Tx__c,Amount__c,Paid__c,Day__c,At__c,Note__c,Partnero_Partner__r.Partnero_Partner_Id__c\n"
            't1,12.5,true,2026-01-02,2026-01-02T03:04:05.000Z,#N/A,ptn_1\n'
            't2,7,false,,,"a, ""quoted""\nline",\n'
            't3,abc,true,,,,\n'
            't4,1,true,,,,ptn_404\n')
    info = raw.run(text, object=TRANSACTION, operation="upsert", externalIdFieldName="Tx__c")

    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == ("JobComplete", 4, 2)
    first = fake.get(TRANSACTION, "Tx__c", "t1")
    assert (first["Amount__c"], first["Paid__c"], first["Note__c"]) == (12.5, True, None)
    assert (first["Day__c"], first["Partnero_Partner__c"]) == ("2026-01-02", contact)
    second = fake.get(TRANSACTION, "Tx__c", "t2")
    assert (second["Amount__c"], second["Paid__c"], second["Note__c"]) == (7, False, 'a, "quoted"\nline')
    assert "Partnero_Partner__c" not in second
    errors = {row[2]: row[1] for row in raw.results(info["id"], "failedResults")[1:]}
    assert errors["t3"] == ("INVALID_FIELD:Failed to deserialize field at col 2. Due to, 'abc' is not a "
                            "valid value for the type xsd:double:Amount__c --")
    assert errors["t4"] == ("INVALID_FIELD:Foreign key external ID: ptn_404 not found for field "
                            "Partnero_Partner_Id__c in entity Contact:--")


def test_a_row_fails_as_the_same_record_in_a_collection(fake, sf, raw):
    """The same records through sObject Collections and through a bulk job: the same outcomes."""
    fake.reject(lambda r: r.get("Email") == "spam@x.test", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "No spam", fields=["Email"])
    records = [{PARTNER_ID: "c1", "LastName": "Ok", "Email": "ok@x.test"},
               {PARTNER_ID: "c2", "LastName": "Spam", "Email": "spam@x.test"},
               {PARTNER_ID: "c3", "LastName": "", "Email": "none@x.test"},
               {PARTNER_ID: "dup", "LastName": "D1", "Email": "d1@x.test"},
               {PARTNER_ID: "dup", "LastName": "D2", "Email": "d2@x.test"}]
    body = {"allOrNone": False, "records": [{"attributes": {"type": "Contact"}, **r} for r in records]}
    collection = sf.restful(f"composite/sobjects/Contact/{PARTNER_ID}", method="PATCH", json=body)
    expected = [None if r["success"] else "{statusCode}:{message}:{joined} --".format(
        joined=",".join(r["errors"][0]["fields"]), **r["errors"][0]).replace(": --", ":--")
        for r in collection]
    fake.reset()
    fake.reject(lambda r: r.get("Email") == "spam@x.test", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "No spam", fields=["Email"])
    raw.headers = {"Authorization": f"Bearer {fake.issue_session()}"}

    text = f"{PARTNER_ID},LastName,Email\n" + "".join(f"{r[PARTNER_ID]},{r['LastName']},{r['Email']}\n"
                                                      for r in records)
    info = raw.run(text, operation="upsert", externalIdFieldName=PARTNER_ID)
    failed = {row[4]: row[1] for row in raw.results(info["id"], "failedResults")[1:]}
    got = [failed.get(r["Email"]) for r in records]
    assert got == expected
    assert expected[1] == "FIELD_CUSTOM_VALIDATION_EXCEPTION:No spam:Email --"


def test_whole_job_failures(fake, raw):
    fake.define_object("Strict__c", fields=["Name", "Ext__c", "Secret__c"], external_ids=["Ext__c"])
    fake.hide_field("Strict__c", "Secret__c")
    cases = {"Name,Foo__c\na,b\n": "InvalidBatch : Field name not found : Foo__c",
             "Name,Secret__c\na,b\n": "InvalidBatch : Field name not found : Secret__c",
             "Name,Nope__r.Ext__c\na,b\n": "InvalidBatch : Field name not found : Nope__r.Ext__c",
             "Name\r\na\r\n": "ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                              "setting is LF"}
    for text, message in cases.items():
        info = raw.run(text, object="Strict__c")
        assert (info["state"], info["errorMessage"]) == ("Failed", message)
        assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (0, 0)
    assert fake.records("Strict__c") == []
    first = fake.bulk.jobs()[0]["id"]
    assert raw.results(first, "unprocessedrecords") == [["Name", "Foo__c"], ["a", "b"]]
    assert raw.results(first, "failedResults") == [["sf__Id", "sf__Error", "Name", "Foo__c"]]


def test_crlf_and_semicolon_jobs(fake, raw):
    info = raw.run("LastName;Email\r\nDoe;d@x.test\r\n", lineEnding="CRLF", columnDelimiter="SEMICOLON")
    assert info["state"] == "JobComplete" and info["numberRecordsFailed"] == 0
    assert fake.records("Contact")[0]["Email"] == "d@x.test"


def test_fail_next_fails_the_job_and_leaves_every_row_unprocessed(fake, raw):
    fake.bulk.fail_next("InvalidBatch : Something went wrong")
    info = raw.run("LastName\nA\nB\n")
    assert (info["state"], info["errorMessage"]) == ("Failed", "InvalidBatch : Something went wrong")
    assert raw.results(info["id"], "unprocessedrecords") == [["LastName"], ["A"], ["B"]]
    assert raw.run("LastName\nC\n")["state"] == "JobComplete"  # only the next one


# ------------------------------------------------------------------ sessions, counting, limits


def test_an_expired_session_is_refused_for_bulk_calls(fake, sf, raw):
    job = raw.create()
    fake.expire_sessions()
    response = raw.call("GET", f"/{job['id']}")
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    with pytest.raises(SalesforceExpiredSession):
        sf.bulk2.Contact.insert(records=[{"LastName": "A"}], wait=WAIT)


def test_bulk_calls_count_against_the_allowance(fake, raw):
    fake.clear_calls()
    job = raw.create()
    first = int(raw.call("GET", f"/{job['id']}").headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])
    raw.upload(job["id"], "LastName\nA\n")
    raw.close(job["id"])
    fake.bulk.wait(job["id"])
    raw.results(job["id"], "successfulResults")
    last = raw.call("GET", f"/{job['id']}")
    assert last.headers["Sforce-Limit-Info"] == f"api-usage={first + 4}/15000"
    assert [fake.count(k) for k in ("bulk_create", "bulk_status", "bulk_upload", "bulk_close",
                                    "bulk_results")] == [1, 2, 1, 1, 1]

    fake.api_remaining = 0
    refused = raw.call("POST", json={"object": "Contact", "operation": "insert"})
    assert refused.status_code == 403 and refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert len(fake.bulk.jobs()) == 1


def test_batches_of_ten_thousand_use_the_daily_allocation(fake, sf, raw):
    before = sf.limits()["DailyBulkApiBatches"]
    assert before == {"Max": 15000, "Remaining": 15000}
    info = raw.run("LastName\n" + "".join(f"L{i}\n" for i in range(10_001)))
    assert info["numberRecordsProcessed"] == 10_001
    assert sf.limits()["DailyBulkApiBatches"]["Remaining"] == 14998
    assert len(fake.records("Contact")) == 10_001


def test_past_the_daily_batches_a_job_fails_with_its_rest_unprocessed(fake, raw):
    fake.bulk.daily_batches = 1
    info = raw.run("LastName\n" + "".join(f"L{i}\n" for i in range(10_001)))
    assert info["state"] == "Failed" and info["errorMessage"].startswith("ExceededQuota : ")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (10_000, 0)
    assert raw.results(info["id"], "unprocessedrecords") == [["LastName"], ["L10000"]]
    assert fake.bulk.batches_used == 1


def test_reset_forgets_jobs_and_stops_their_processing(fake, raw):
    fake.bulk.hold()
    job = raw.create()
    raw.upload(job["id"], "LastName\nA\n")
    raw.close(job["id"])
    fake.reset()
    assert fake.bulk.jobs() == []
    time.sleep(0.2)
    assert fake.records("Contact") == []
