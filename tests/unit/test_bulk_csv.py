"""The pure parts of Bulk API 2.0 ingest: the CSV a job carries, and ``sf__Error`` read back."""

from __future__ import annotations

import csv
import io

import pytest

from sync.mapping import load_mappings
from sync.salesforce import bulk
from tests.conftest import MAPPINGS


@pytest.mark.parametrize("text, expected", [
    # Salesforce's own example (Bulk API results) and jsforce's, recorded against a real org.
    ("REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --",
     ("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]")),
    ("REQUIRED_FIELD_MISSING:Required fields are missing: [Company]:--",
     ("REQUIRED_FIELD_MISSING", "Required fields are missing: [Company]")),
    ("INVALID_FIELD:Foreign key external ID: ptn_1 not found for field Partnero_Partner_Id__c in entity Contact:--",
     ("INVALID_FIELD", "Foreign key external ID: ptn_1 not found for field Partnero_Partner_Id__c in entity Contact")),
    ("INVALID_TYPE_ON_FIELD_IN_RECORD:Amount: value not of required type",
     ("INVALID_TYPE_ON_FIELD_IN_RECORD", "Amount: value not of required type")),
    ("FIELD_CUSTOM_VALIDATION_EXCEPTION:Nope:Name,Email --", ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Nope")),
    # A value Salesforce quotes is not kept.
    ("INVALID_EMAIL_ADDRESS:Email: invalid email address: maria@:Email --",
     ("INVALID_EMAIL_ADDRESS", "Email: invalid email address: …")),
])
def test_sf_error_reads_as_code_and_message(text, expected):
    assert bulk.error(text) == expected


def test_a_failed_row_reads_as_the_answer_a_collections_call_gives():
    answer = bulk.result({"sf__Id": "", "sf__Error": "INVALID_FIELD:Foreign key external ID: p1 not found for field "
                          "Partnero_Partner_Id__c in entity Contact:--"}, success=False)
    assert (answer.success, answer.missing_parent, answer.parent) == (False, True, "Contact/p1")
    assert bulk.result({"sf__Error": "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access:--"}, False).transient
    ok = bulk.result({"sf__Id": "0035g00000AbCdEAAV", "sf__Created": "true"}, success=True)
    assert (ok.success, ok.id, ok.created) == (True, "0035g00000AbCdEAAV", True)


def test_the_csv_has_a_column_per_field_and_reference_and_says_null_as_salesforce_reads_it():
    target = next(m for m in load_mappings(MAPPINGS).salesforce_objects() if m.salesforce.object == "Account").salesforce
    header = bulk.columns(target)
    assert header[0] == "Partnero_Customer_Key__c" and "Partnero_Partner__r.Partnero_Partner_Id__c" in header
    data = bulk.CsvJob(header)
    assert data.add({"Partnero_Customer_Key__c": "a,1", "Name": 'Say "hi"\nthere', "Partnero_Email__c": None,
                     "Partnero_Partner__r": {"Partnero_Partner_Id__c": "p1"}})
    assert data.add({"Partnero_Customer_Key__c": "a2", "Name": "", "Partnero_Status__c": True})  # no parent: left
    data.file.seek(0)
    rows = list(csv.DictReader(io.TextIOWrapper(data.file, encoding="utf-8", newline="")))
    assert rows[0]["Partnero_Customer_Key__c"] == "a,1" and rows[0]["Name"] == 'Say "hi"\nthere'
    assert rows[0]["Partnero_Email__c"] == "#N/A" and rows[0]["Partnero_Partner__r.Partnero_Partner_Id__c"] == "p1"
    assert rows[0]["Partnero_Status__c"] == ""  # not sent: left as it is
    assert (rows[1]["Name"], rows[1]["Partnero_Status__c"], rows[1]["Partnero_Partner__r.Partnero_Partner_Id__c"]) == (
        "#N/A", "true", "")
    assert data.records == 2


def test_a_csv_stops_at_its_limit_and_keeps_what_it_has():
    data = bulk.CsvJob(["Ext__c", "Amount__c"], limit=40)
    assert data.add({"Ext__c": "k1", "Amount__c": 149.0}) and data.add({"Ext__c": "k2", "Amount__c": 1e21})
    assert not data.add({"Ext__c": "k3", "Amount__c": 0.1})
    data.file.seek(0)
    assert data.file.read() == b"Ext__c,Amount__c\nk1,149.0\nk2,1e+21\n" and data.size == 35 and data.records == 2
    first = bulk.CsvJob(["Ext__c"], limit=1)
    assert first.add({"Ext__c": "a record larger than the limit still goes, alone"}) and first.records == 1
