"""Bulk API 2.0 ingest, as a flush uses it: a job's calls, its CSV, and its results read back.

The calls go over the client's logged-in session (``SalesforceClient.bulk_request``, which
classifies every answer and renews an expired session). Grounded in Salesforce's Bulk API 2.0
Developer Guide:

* Create a Job: ``POST jobs/ingest`` with ``object``, ``operation: upsert``,
  ``externalIdFieldName``, ``contentType: CSV``, ``lineEnding: LF``; the answer has ``id`` and
  ``state`` (Open).
* Upload Job Data: ``PUT jobs/ingest/{id}/batches``, ``text/csv``, answered 201. "A request can
  provide CSV data that does not in total exceed 150 MB of base64 encoded content ... upload
  data that does not exceed 100 MB": ``MAX_JOB_BYTES``.
* Upload Complete: ``PATCH jobs/ingest/{id}`` ``{"state": "UploadComplete"}``; Abort: the same
  with ``Aborted`` (an Open job only is aborted by the flush).
* Job Info: ``GET jobs/ingest/{id}``: ``state`` (Open, UploadComplete, InProgress, JobComplete,
  Failed, Aborted) and, for a failed job, ``errorMessage``.
* ``successfulResults`` (``sf__Id``, ``sf__Created``, then the uploaded columns) and
  ``failedResults`` (``sf__Id``, ``sf__Error``: "Error code and message", then the uploaded
  columns): CSV, in no particular order; a record is matched back by its external id column.
  ``unprocessedrecords`` lists what a failed or aborted job did not process: exactly the records
  in neither of the two, so it is not read (one call less); those records are due again.
* Valid CSV record rows: "Empty field values are ignored when you update records. To set a field
  value to null, use a field value of #N/A". Relationship columns are ``Rel__r.External_Id__c``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import requests

from sync.core.errors import TransientError
from sync.mapping.spec import SalesforceTarget
from sync.salesforce.client import RecordResult, SalesforceClient, without_values

#: Salesforce takes up to 150 MB of base64 a job, and says that is about 100 MB of CSV: a job
#: holds at most this much (more records go in the next job).
MAX_JOB_BYTES = 100 * 1000 * 1000
#: Our own cap on a job's records, below Salesforce's: a flush fills a job within one step (about
#: 7,500 records/s measured in bench/crm.py), and this keeps that step far inside a flush job's
#: time limit (``FLUSH_JOB_TIMEOUT``, 300 s) even on a slow database. More go in the next job.
MAX_JOB_RECORDS = 150_000
#: A job's CSV stays in memory up to this size, then on disk.
SPOOL_BYTES = 8 * 1024 * 1024
#: The CSV value that sets a field to null (an empty one leaves it as it is).
NULL = "#N/A"
CSV_TYPE = "text/csv"
#: Results are read this many bytes at a time.
READ_BYTES = 64 * 1024


class JobState(StrEnum):
    """An ingest job's ``state`` at Salesforce."""

    OPEN = "Open"
    UPLOAD_COMPLETE = "UploadComplete"
    IN_PROGRESS = "InProgress"
    COMPLETE = "JobComplete"
    FAILED = "Failed"
    ABORTED = "Aborted"


#: States a job never leaves: its results can be read.
ENDED = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.ABORTED})


class BulkApi:
    """The Bulk API 2.0 ingest calls, one request each."""

    def __init__(self, client: SalesforceClient):
        self.client = client

    def create(self, object_name: str, external_id: str) -> str:
        """A new upsert job by ``external_id``; its id."""
        body = {"object": object_name, "operation": "upsert", "externalIdFieldName": external_id,
                "contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA"}
        answer = self.client.bulk_request("POST", "ingest", data=json.dumps(body)).json()
        return str(answer["id"])

    def upload(self, job_id: str, data: Any) -> None:
        """The job's CSV (a file, read from its start)."""
        self.client.bulk_request("PUT", f"ingest/{job_id}/batches", data=data, content_type=CSV_TYPE)

    def close(self, job_id: str) -> str:
        """Upload complete: Salesforce starts processing. The job's state."""
        return self._set_state(job_id, JobState.UPLOAD_COMPLETE)

    def abort(self, job_id: str) -> str:
        return self._set_state(job_id, JobState.ABORTED)

    def info(self, job_id: str) -> dict[str, Any]:
        """Job Info: ``state``, ``errorMessage`` (a failed job), the counts."""
        return self.client.bulk_request("GET", f"ingest/{job_id}").json()

    def results(self, job_id: str, kind: str) -> Iterator[dict[str, str]]:
        """The rows of ``successfulResults`` or ``failedResults``. The answer is first read whole
        into a spooled temporary file (never held in memory whole, and the connection never
        waits on the database), then parsed row by row. Raises ``TransientError`` when the
        answer breaks off."""
        response = self.client.bulk_request("GET", f"ingest/{job_id}/{kind}", accept=CSV_TYPE, stream=True)
        with response, tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as file:
            try:
                for chunk in response.iter_content(READ_BYTES):
                    file.write(chunk)
            except requests.RequestException as exc:
                raise TransientError(f"Salesforce's {kind} of a bulk job broke off: {type(exc).__name__}") from exc
            file.seek(0)
            yield from csv.DictReader(io.TextIOWrapper(file, encoding="utf-8-sig", newline=""))

    def _set_state(self, job_id: str, state: JobState) -> str:
        answer = self.client.bulk_request("PATCH", f"ingest/{job_id}", data=json.dumps({"state": state.value}))
        return str(answer.json().get("state") or state.value)


def columns(target: SalesforceTarget) -> list[str]:
    """The CSV header of ``target``'s jobs: the external id, every field the mapping sends, each
    reference as ``Rel__r.External_Id__c``, the commission fields."""
    references = {r.name: r.external_id for r in target.references}
    names = sorted(n for n in target.named if n not in references and n != target.external_id)
    return [target.external_id, *names, *(f"{rel}.{ext}" for rel, ext in sorted(references.items())),
            *sorted(set(target.commission.values()) - set(names))]


class CsvJob:
    """A job's CSV, written record by record into a spooled temporary file, up to ``limit`` bytes
    and ``max_records`` records."""

    def __init__(self, header: list[str], limit: int | None = None, max_records: int = MAX_JOB_RECORDS):
        self.header = header
        self.limit = MAX_JOB_BYTES if limit is None else limit
        self.max_records = max_records
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b")
        self.records = 0
        self.size = 0
        self._line = io.StringIO()
        self._writer = csv.writer(self._line, lineterminator="\n")
        self._write(self._encoded(header))

    def add(self, record: dict[str, Any]) -> bool:
        """Add one record as the flush builds it for Salesforce (``Flusher.record_of``); False (and
        nothing added) when it would take the CSV past its limits: it goes in the next job."""
        if self.records >= self.max_records:
            return False
        cells = []
        for name in self.header:
            rel, dot, ext = name.partition(".")
            if dot:
                parent = record.get(rel)
                cells.append(cell(parent.get(ext)) if isinstance(parent, dict) else "")  # no parent: leave it
            else:
                cells.append(cell(record[name]) if name in record else "")  # not sent: leave it
        data = self._encoded(cells)
        if self.records and self.size + len(data) > self.limit:
            return False
        self._write(data)
        self.records += 1
        return True

    def close(self) -> None:
        self.file.close()

    def _encoded(self, cells: list[str]) -> bytes:
        self._line.seek(0)
        self._line.truncate()
        self._writer.writerow(cells)
        return self._line.getvalue().encode()

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)


def cell(value: Any) -> str:
    """A JSON value as Salesforce's CSV takes it: null (and an empty text, which the JSON path
    also stores as null) as ``#N/A``, booleans as true/false, numbers as JSON writes them."""
    if value is None or value == "":
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return str(value)


#: The fields Salesforce names after an error's message ("...:LastName --", ":--"), dropped.
_ERROR_FIELDS = re.compile(r":(?:[A-Za-z0-9_.]+(?:,\s*[A-Za-z0-9_.]+)*)?\s*(?:--)?\s*$")


def error(text: str) -> tuple[str, str]:
    """``sf__Error`` ("CODE:message:fields --") as (code, message), the message without the
    values Salesforce may quote in it."""
    code, _, message = (text or "").strip().partition(":")
    if not message and not re.fullmatch(r"[A-Z_]+", code):
        code, message = "UNKNOWN", code  # not grounded: an error with no code in front
    message = _ERROR_FIELDS.sub("", message).strip()
    return code or "UNKNOWN", without_values(message)


def result(row: dict[str, str], success: bool) -> RecordResult:
    """A row of ``successfulResults`` (``success``) or ``failedResults`` as the answer Salesforce
    would have given in a Collections call."""
    if success:
        return RecordResult(True, id=row.get("sf__Id") or None, created=(row.get("sf__Created") or "").lower() == "true")
    code, message = error(row.get("sf__Error", ""))
    return RecordResult(False, id=row.get("sf__Id") or None, code=code, message=message)
