"""Bulk API 2.0 ingest for the Salesforce stand-in (tests/fakes/salesforce.py): jobs, CSV, results.

A job is created (Open), takes CSV uploads, is closed (UploadComplete) and is then processed in a
background thread (InProgress, then JobComplete, Failed or Aborted), 10,000 rows to a batch. Each
row is written through the fake's own record writing, so a row succeeds or fails as the same record
would in an sObject Collections upsert; its error is written as ``sf__Error`` is.

Where each shape comes from (quoted by section below):

* [GUIDE] "Bulk API 2.0 and Bulk API Developer Guide", developer.salesforce.com/docs/atlas.en-us.
  api_asynch.meta/api_asynch/ (Version 66.0): sections "Create a Job", "Upload Job Data",
  "Upload Complete", "Get Information About an Ingest Job", "Get Job Successful/Failed/Unprocessed
  Record Results", "Delete a Job", "Abort a Job", "Get Information About All Ingest Jobs", "Prepare
  CSV Files", "Relationship Fields in a Header Row (2.0)", "Understanding Bulk API 2.0 Ingest",
  "Errors", and the query-job sections "Delete a Query Job" and "Abort a Query Job" (error bodies).
* [RECORDED-MOHANC] a real update job's answers as printed by the sfdx plugin mohanc (create, GET
  while Open before and after the upload, PATCH UploadComplete, GET InProgress/JobComplete, the
  empty failedResults and unprocessedrecords): document "Update using Bulk API 2.0" by
  mohan-chinnappan-n (found with find_string, id 36919093699).
* [RECORDED-JSFORCE] jsforce/jsforce test/bulk2.test.ts, run against a real org:
  ``sf__Error == 'REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --'``, ``sf__Id``
  empty on a failed row, an invalid token answers INVALID_SESSION_ID.
* [RECORDED-AMPLABS] amp-labs/connectors pull request #118: a real Failed upsert job, errorMessage
  ``InvalidBatch : Field name not found : ContactId__c``, numberRecordsProcessed 0.
* [LIMITS] "Bulk API and Bulk API 2.0 Limits and Allocations" (Salesforce Developer Limits and
  Allocations Quick Reference): 15,000 batches per rolling 24 hours shared by Bulk API and Bulk API
  2.0, only ingest jobs consume them; the REST /limits keys DailyBulkApiBatches,
  DailyBulkV2QueryJobs and DailyBulkV2QueryFileStorageMB (recorded limits answers found with
  find_string: Max 15000, 10000 and 976562).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

#: [GUIDE] "Understanding Bulk API 2.0 Ingest": "Salesforce creates a separate batch for every
#: 10,000 records in your job data".
BATCH_RECORDS = 10_000
#: [GUIDE] "Upload Job Data": "A request can provide CSV data that does not in total exceed 150 MB
#: of base64 encoded content ... upload data that does not exceed 100 MB." Not grounded: whether
#: "MB" is 10**6 or 2**20 bytes (the fake takes 2**20).
MAX_UPLOAD_BASE64 = 150 * 1024 * 1024
#: [LIMITS] "You can submit up to 15,000 batches per rolling 24-hour period."
DAILY_BATCHES = 15_000
#: [GUIDE] "Get Information About All Ingest Jobs": "returns up to 1000 result rows per request".
LIST_PAGE = 1000
#: How many rows are written while the fake's lock is held, so other calls interleave.
_SLICE = 250

STATES_FINAL = ("JobComplete", "Failed", "Aborted")
OPERATIONS = ("insert", "upsert", "update", "delete", "hardDelete")
#: [GUIDE] "Create a Job", columnDelimiter.
DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
RESULT_KINDS = {"successfulresults": "successful", "failedresults": "failed",
                "unprocessedrecords": "unprocessed"}

# Row outcomes, one byte a row.
UNPROCESSED, CREATED, UPDATED, FAILED = 0, 1, 2, 3


class BulkError(Exception):
    """A whole request refused: ``status`` and Salesforce's error list."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def payload(self) -> list[dict]:
        return [{"errorCode": self.code, "message": self.message}]


class BulkAnswer(NamedTuple):
    """What a bulk request answers; the fake turns it into its HTTP reply."""

    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    records: int = 0
    detail: str = ""


#: [GUIDE] "Get Information About an Ingest Job", "Response Body - For an Unsuccessful Request":
#: a job that does not exist (or was deleted) answers 404 with this body.
def _not_found() -> BulkError:
    return BulkError(404, "NOT_FOUND", "The requested resource does not exist")


def _json(status: int, payload: Any, **kw: Any) -> BulkAnswer:
    return BulkAnswer(status, json.dumps(payload, separators=(",", ":")).encode(), **kw)


def _stamp() -> str:
    # [RECORDED-MOHANC] "createdDate: '2021-08-31T01:31:13.000+0000'": whole seconds, .000, +0000.
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def error_text(code: str, message: str, fields: list[str] | tuple[str, ...]) -> str:
    """``sf__Error`` as Salesforce writes it: ``CODE:message:Field --`` ([RECORDED-JSFORCE]),
    ``CODE:message:--`` when the error names no field. Not grounded: how several fields are
    joined (the fake joins them with a comma)."""
    return f"{code}:{message}:{','.join(fields)} --" if fields else f"{code}:{message}:--"


@dataclass
class Column:
    """What one header column means for the job's object."""

    name: str
    kind: str                 # field | rel | ext | id
    field: str = ""           # the field written (canonical), or the lookup field of a rel
    rel: str = ""             # the relationship name of a rel column
    target_field: str = ""    # the parent's indexed field of a rel column
    type: str | None = None   # the field's type as the fake reads it (double, boolean, ...)


@dataclass
class _Job:
    id: str
    operation: str
    object: str
    external_id: str | None
    line_ending: str
    delimiter: str
    api_version: str
    created_by: str
    created: str
    modstamp: str
    state: str = "Open"
    uploads: list[bytes] = field(default_factory=list)
    error: str | None = None
    rows: int = 0
    processed: int = 0
    failed: int = 0
    retries: int = 0
    total_ms: int = 0
    active_ms: int = 0
    outcome: bytearray = field(default_factory=bytearray)
    ids: list = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class BulkIngest:
    """The Bulk API 2.0 ingest model of one fake (``fake.bulk``); see the module docstring of
    tests/fakes/salesforce.py for the switches."""

    def __init__(self, fake: Any):
        self._fake = fake
        self._lock = threading.Condition(threading.RLock())
        self._jobs: dict[str, _Job] = {}
        self._counter = 0
        self._held = False
        self._fail_next: list[str] = []
        self._batches_used = 0
        self._stopping = threading.Event()
        #: Seconds a closed job waits in UploadComplete before it is processed.
        self.processing_delay = 0.05
        #: [GUIDE] "Upload Job Data": the base64 size every upload of a job may add up to.
        self.max_upload_base64 = MAX_UPLOAD_BASE64
        self.daily_batches = DAILY_BATCHES
        self.list_page = LIST_PAGE

    # ------------------------------------------------------------------ switches and observing

    def hold(self) -> None:
        """Until ``release()``, a closed job stays UploadComplete and one InProgress stops before
        its next batch (thread-safe)."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held = False
            self._lock.notify_all()

    def fail_next(self, message: str) -> None:
        """The next job processed ends Failed with this errorMessage, every row unprocessed."""
        with self._lock:
            self._fail_next.append(message)

    def jobs(self) -> list[dict]:
        """Every job: id, object, operation, state, records, uploads, processed, failed, error."""
        with self._lock:
            return [{"id": j.id, "object": j.object, "operation": j.operation, "state": j.state,
                     "records": j.rows, "uploads": len(j.uploads), "processed": j.processed,
                     "failed": j.failed, "error": j.error} for j in self._jobs.values()]

    def wait(self, job_id: str, timeout: float = 10.0) -> str:
        """Block until the job is in a final state; returns the state."""
        with self._lock:
            job = self._jobs[job_id]
        job.done.wait(timeout)
        return job.state

    @property
    def batches_used(self) -> int:
        with self._lock:
            return self._batches_used

    def limits(self) -> dict:
        """What ``GET limits`` adds ([LIMITS]; the query-job allocations are not modelled)."""
        with self._lock:
            used = self._batches_used
        return {"DailyBulkApiBatches": {"Max": self.daily_batches,
                                        "Remaining": max(0, self.daily_batches - used)},
                "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}}

    def upload_read_limit(self) -> int:
        """The largest upload body the fake reads before answering (a bit over the limit, so
        an upload just over it gets Salesforce's refusal rather than the server's)."""
        return self.max_upload_base64 * 3 // 4 + 1024 * 1024

    def reset(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.done.set()
            self._jobs.clear()
            self._fail_next.clear()
            self._held = False
            self._batches_used = 0
            self._lock.notify_all()

    def stop(self) -> None:
        self._stopping.set()
        self.release()

    # ------------------------------------------------------------------ routing

    def kind(self, method: str, segments: list[str], body: bytes) -> str:
        """The call kind ``fake.count`` files a request under."""
        n = len(segments)
        if n == 2:
            return "bulk_create" if method == "POST" else "bulk_list"
        if n == 3:
            if method == "PATCH":
                return "bulk_abort" if b"Aborted" in body else "bulk_close"
            return "bulk_delete" if method == "DELETE" else "bulk_status"
        return "bulk_upload" if segments[3] == "batches" else "bulk_results"

    def route(self, method: str, segments: list[str]) -> dict[str, Callable]:
        """The handlers for a path under jobs/ingest, by method (empty: no such resource)."""
        n = len(segments)
        if n == 2:
            return {"POST": self._create, "GET": self._list}
        if n == 3:
            return {"GET": self._status, "PATCH": self._set_state, "DELETE": self._delete}
        if n == 4 and segments[3] == "batches":
            return {"PUT": self._upload}
        if n == 4 and segments[3].lower() in RESULT_KINDS:
            # [GUIDE] names the last one "unprocessedrecords"; simple-salesforce asks for
            # "unprocessedRecords": the fake takes either. Not grounded: whether Salesforce's
            # paths ignore case.
            return {"GET": self._results}
        return {}

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise _not_found()
        return job

    # ------------------------------------------------------------------ create, list, status

    def _create(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        data = _body_json(body)
        spec = self._check_create(data)
        with self._lock:
            self._counter += 1
            job_id = self._fake._bulk_job_id(self._counter)
            now = _stamp()
            job = _Job(job_id, data["operation"], spec.name, data.get("externalIdFieldName"),
                       data.get("lineEnding") or "LF", data.get("columnDelimiter") or "COMMA",
                       version, self._fake.user_id, now, now)
            self._jobs[job_id] = job
            # [GUIDE] "Step 3: Bulk Insert" and [RECORDED-MOHANC]: create answers 200 with the job.
            return _json(200, self._info(job, "create"))

    def _check_create(self, data: Any) -> Any:
        """The create request's refusals. Not grounded: the exact codes and messages of these
        refusals (Salesforce documents the fields and their values, not these error bodies);
        the codes are the upper-case Bulk API exception codes [GUIDE] "Errors" lists, as
        Salesforce writes them in Bulk API 2.0 bodies (INVALIDJOBSTATE in "Abort a Query Job",
        INVALIDENTITY recorded in airbytehq/airbyte issue #7518)."""
        if not isinstance(data, dict):
            raise BulkError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = data.get("operation")
        if operation not in OPERATIONS:
            raise BulkError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
        spec = self._fake._spec(str(data.get("object") or ""))
        if spec is None:
            raise BulkError(400, "INVALIDENTITY",
                            f"Entity '{data.get('object')}' is not supported by the Bulk API.")
        if data.get("contentType", "CSV") != "CSV":
            raise BulkError(400, "INVALIDJOB", "InvalidJob : Only CSV is supported")
        if data.get("lineEnding", "LF") not in LINE_ENDINGS:
            raise BulkError(400, "INVALIDJOB", f"InvalidJob : Invalid lineEnding: {data['lineEnding']}")
        if data.get("columnDelimiter", "COMMA") not in DELIMITERS:
            raise BulkError(400, "INVALIDJOB",
                            f"InvalidJob : Invalid columnDelimiter: {data['columnDelimiter']}")
        if operation == "upsert" and not data.get("externalIdFieldName"):
            # Bulk API's own words for it (Force.com-Toolkit-for-NET issue #331, recorded).
            raise BulkError(400, "INVALIDJOB", f"InvalidJob : External ID was blank for {spec.name}. "
                                               "An External ID must be specified for upsert.")
        self._fake._object_from_url(spec.name)  # 403 INSUFFICIENT_ACCESS as for every REST call
        if operation == "upsert" and self._fake._bulk_external_id(spec, data["externalIdFieldName"]) is None:
            # Bulk API's words for it, as a Data Loader user quotes them (theswamis/dataloadercliq
            # issue #42: "field name provided does not match an external id"); not grounded word
            # for word.
            raise BulkError(400, "INVALIDJOB", f"InvalidJob : Field name provided, "
                                               f"{data['externalIdFieldName']} does not match an "
                                               f"External ID, Salesforce Id, or indexed field for {spec.name}")
        return spec

    def _info(self, job: _Job, shape: str) -> dict:
        """JobInfo as each call shows it ([GUIDE] examples, [RECORDED-MOHANC]): create adds
        contentUrl, lineEnding, columnDelimiter; a PATCH stops at apiVersion; GET adds jobType,
        contentUrl while Open, the counts once data is uploaded, the times, errorMessage."""
        info: dict[str, Any] = {"id": job.id, "operation": job.operation, "object": job.object,
                                "createdById": job.created_by, "createdDate": job.created,
                                "systemModstamp": job.modstamp, "state": job.state}
        if job.external_id:
            info["externalIdFieldName"] = job.external_id
        info.update({"concurrencyMode": "Parallel", "contentType": "CSV",
                     "apiVersion": float(job.api_version)})
        if shape == "patch":
            return info
        if shape != "create":
            info["jobType"] = "V2Ingest"
        if job.state == "Open" and shape != "list":
            info["contentUrl"] = f"services/data/v{job.api_version}/jobs/ingest/{job.id}/batches"
        info.update({"lineEnding": job.line_ending, "columnDelimiter": job.delimiter})
        if shape == "status":
            if job.uploads or job.state != "Open":
                info.update({"numberRecordsProcessed": job.processed,
                             "numberRecordsFailed": job.failed})
            if job.error is not None:
                info["errorMessage"] = job.error
            info.update({"retries": job.retries, "totalProcessingTime": job.total_ms,
                         "apiActiveProcessingTime": job.active_ms, "apexProcessingTime": 0})
        return info

    def _status(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        with self._lock:
            return _json(200, self._info(self._job(segments[2]), "status"))

    def _list(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        """[GUIDE] "Get Information About All Ingest Jobs": done, records, nextRecordsUrl (a
        queryLocator URL while more remain, else null), jobType filters."""
        wanted = query.get("jobType", [None])[-1]
        locator = query.get("queryLocator", [""])[-1]
        start = int(locator.rsplit("-", 1)[-1]) if locator.rsplit("-", 1)[-1].isdigit() else 0
        with self._lock:
            jobs = [j for j in self._jobs.values() if wanted in (None, "V2Ingest")]
            page = [self._info(j, "list") for j in jobs[start:start + self.list_page]]
            more = start + self.list_page < len(jobs)
        payload: dict[str, Any] = {"done": not more, "records": page, "nextRecordsUrl": None}
        if more:
            payload["nextRecordsUrl"] = (f"/services/data/v{version}/jobs/ingest?queryLocator="
                                         f"01gHs0000000001AAA-{start + self.list_page}")
        return _json(200, payload, records=len(page))

    # ------------------------------------------------------------------ upload, state, delete

    def _upload(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        with self._lock:
            job = self._job(segments[2])
            if job.state != "Open":
                # Not grounded: Salesforce's answer to an upload to a job no longer Open; the
                # fake refuses it as an invalid job state ([GUIDE] "Errors": InvalidJobState).
                raise BulkError(400, "INVALIDJOBSTATE",
                                f"InvalidJobState : Job {job.id} is {job.state}; data can only be "
                                "uploaded to an Open job")
            total = sum(map(len, job.uploads)) + len(body)
            if _base64_size(total) > self.max_upload_base64:
                # [GUIDE] "Upload Job Data" gives the limit. Not grounded: the refusal's shape;
                # the fake words it as Bulk API's ClientInputError for its batch limit
                # ("Failed to read request. Exceeded max size limit of 10000000", recorded in
                # jsforce/jsforce issue #31).
                raise BulkError(400, "CLIENTINPUTERROR", "Failed to read request. Exceeded max size "
                                                         f"limit of {self.max_upload_base64}")
            job.uploads.append(bytes(body))
            # [GUIDE] "Upload Job Data": "Returns a status code of 201 (Created)", no body.
            return BulkAnswer(201, b"", "text/plain;charset=UTF-8")

    def _set_state(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        wanted = _body_json(body)
        wanted = wanted.get("state") if isinstance(wanted, dict) else None
        with self._lock:
            job = self._job(segments[2])
            if wanted == "UploadComplete" and job.state == "Open":
                job.state, job.modstamp = "UploadComplete", _stamp()
                threading.Thread(target=self._run, args=(job,), daemon=True,
                                 name=f"fake-bulk-{job.id}").start()
            elif wanted == "Aborted" and job.state not in STATES_FINAL:
                job.state, job.modstamp = "Aborted", _stamp()
                job.done.set()
                self._lock.notify_all()
            elif wanted == "Aborted":
                # [GUIDE] "Abort a Query Job", "Response Body - For an Unsuccessful Request".
                raise BulkError(400, "INVALIDJOBSTATE", "Aborting already Completed Job not allowed")
            else:
                # Not grounded: the answer to closing a job that is not Open, or to another
                # state; [GUIDE] "Errors": "InvalidJobState: The job state specified in a job
                # update operation is invalid."
                raise BulkError(400, "INVALIDJOBSTATE", f"InvalidJobState : Invalid job state "
                                                        f"transition from {job.state} to {wanted}")
            # [GUIDE] "Step 3: Bulk Insert" step 4 and [RECORDED-MOHANC] "PATCH STATE".
            return _json(200, self._info(job, "patch"))

    def _delete(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        with self._lock:
            job = self._job(segments[2])
            # [GUIDE] "Delete a Job": "To be deleted, a job must have a state of UploadComplete,
            # JobComplete, Aborted, or Failed." The refusal is "Delete a Query Job"'s.
            if job.state in ("Open", "InProgress"):
                raise BulkError(400, "API_ERROR", "Error encountered when deleting the job because "
                                                  "the job is not terminated")
            del self._jobs[job.id]
            job.done.set()
            self._lock.notify_all()
            return BulkAnswer(204)

    # ------------------------------------------------------------------ results

    def _results(self, version: str, segments: list[str], query: dict, body: bytes) -> BulkAnswer:
        which = RESULT_KINDS[segments[3].lower()]
        with self._lock:
            job = self._job(segments[2])
            if job.state not in STATES_FINAL:
                # [GUIDE] "Step 3: Bulk Insert": results are there "After a job is in the
                # JobComplete or Failed state". Not grounded: the answer before that; the fake
                # refuses as an invalid job state.
                raise BulkError(400, "INVALIDJOBSTATE", f"InvalidJobState : Job {job.id} is "
                                                        f"{job.state}; results are not ready")
            uploads, outcome, ids, errors = list(job.uploads), job.outcome, job.ids, job.errors
            delimiter = DELIMITERS[job.delimiter]
        text, count = _results_csv(which, uploads, delimiter, outcome, ids, errors,
                                   LINE_ENDINGS[job.line_ending])
        return BulkAnswer(200, text.encode(), "text/csv;charset=UTF-8", records=count)

    # ------------------------------------------------------------------ processing

    def _run(self, job: _Job) -> None:
        started = time.monotonic()
        if not self._wait_turn(job):
            return
        try:
            plan, rows = self._prepare(job)
            self._process(job, plan, rows)
        except JobFailure as failure:
            self._finish(job, "Failed", str(failure), started)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake still ends the job
            # [GUIDE] "Errors": "Unknown: Exception with unknown cause occurred."
            self._finish(job, "Failed", f"Unknown : {exc!r}", started)
        else:
            self._finish(job, None, None, started)

    def _wait_turn(self, job: _Job) -> bool:
        """Wait the processing delay and while jobs are held; False if the job went away."""
        deadline = time.monotonic() + max(0.0, float(self.processing_delay))
        with self._lock:
            while not self._stopping.is_set() and job.state == "UploadComplete" and job.id in self._jobs:
                left = deadline - time.monotonic()
                if left <= 0 and not self._held:
                    break
                self._lock.wait(left if left > 0 else 0.05)
            if job.state != "UploadComplete" or job.id not in self._jobs or self._stopping.is_set():
                return False
            job.state, job.modstamp = "InProgress", _stamp()
            message = self._fail_next.pop(0) if self._fail_next else None
        if message is not None:
            self._prepare_rows_only(job)
            self._finish(job, "Failed", message, time.monotonic())
            return False
        return True

    def _prepare_rows_only(self, job: _Job) -> None:
        try:
            self._prepare(job)
        except JobFailure:
            pass

    def _prepare(self, job: _Job) -> tuple[list[Column], int]:
        """Read the header and count the rows: a job whose data cannot be read fails whole."""
        parsed = _parse_uploads(job.uploads, DELIMITERS[job.delimiter], LINE_ENDINGS[job.line_ending])
        header, _ = next(parsed, (None, ""))
        rows = 0 if header is None else sum(1 for _ in parsed)
        with self._lock:
            job.rows = rows
            job.outcome = bytearray(rows)
            job.ids = [None] * rows
        if header is None:
            return [], 0
        return plan_columns(self._fake, job.object, job.operation, job.external_id, header), rows

    def _process(self, job: _Job, plan: list[Column], rows: int) -> None:
        parsed = _parse_uploads(job.uploads, DELIMITERS[job.delimiter], LINE_ENDINGS[job.line_ending])
        next(parsed, None)
        index = 0
        for batch in _chunks(parsed, BATCH_RECORDS):
            with self._lock:
                while self._held and self._live(job):  # hold(): no further batch until release()
                    self._lock.wait(0.05)
                if not self._live(job):
                    return
                if self._batches_used >= self.daily_batches:
                    # [GUIDE] "Understanding Bulk API 2.0 Ingest": past the daily allocation "the
                    # remaining data isn't processed. The ingest job is marked as having failed."
                    # The message is [GUIDE] "Errors"' ExceededQuota; not grounded as written.
                    job.error = ("ExceededQuota : The job or batch you tried to create exceeds the "
                                 "allowed number for the past 24-hour period.")
                    return
                self._batches_used += 1
            outcomes = write_batch(self._fake, job.object, job.operation, job.external_id,
                                   plan, [row for _, row in batch])
            self._record(job, index, outcomes)
            index += len(batch)

    def _live(self, job: _Job) -> bool:
        return job.state == "InProgress" and job.id in self._jobs and not self._stopping.is_set()

    def _record(self, job: _Job, start: int, outcomes: list[tuple]) -> None:
        with self._lock:
            for offset, (state, rid, error) in enumerate(outcomes):
                job.outcome[start + offset] = state
                job.ids[start + offset] = rid
                if error is not None:
                    job.errors[start + offset] = error
                    job.failed += 1
            job.processed += len(outcomes)
            job.modstamp = _stamp()

    def _finish(self, job: _Job, state: str | None, error: str | None, started: float) -> None:
        with self._lock:
            if job.state == "InProgress":
                job.error = error or job.error
                job.state = state or ("Failed" if job.error else "JobComplete")
            elapsed = int((time.monotonic() - started) * 1000)
            job.total_ms, job.active_ms = elapsed, elapsed
            job.modstamp = _stamp()
            job.done.set()
            self._lock.notify_all()


class JobFailure(Exception):
    """A job's data cannot be processed: the job ends Failed with this errorMessage."""


def _body_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BulkError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None


def _base64_size(raw: int) -> int:
    return 4 * ((raw + 2) // 3)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _parse_uploads(uploads: list[bytes], delimiter: str,
                   line_ending: str) -> Iterator[tuple[list[str] | None, str]]:
    """The header (with its raw line), then ``(upload, row)`` for every row, streamed.

    [GUIDE] "Prepare CSV Files": a header row of field names, UTF-8, the job's delimiter, double
    quotes escaping delimiters and line endings, values not trimmed. A later upload must repeat
    the first one's header (not grounded: how Salesforce takes several uploads to one job).
    """
    header: list[str] | None = None
    for number, data in enumerate(uploads):
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        first = text.readline()
        _check_line_ending(first, line_ending)
        this_header = next(csv.reader([first], delimiter=delimiter, strict=True), None)
        if header is None:
            header = this_header
            yield header, first.rstrip("\r\n")
        elif this_header != header:
            raise JobFailure("InvalidBatch : the uploads of this job have different header rows")
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        try:
            for row in reader:
                if row == []:
                    continue
                if len(row) != len(header):
                    # Not grounded: Salesforce's message for a row of the wrong width.
                    raise JobFailure(f"InvalidBatch : Wrong number of columns in row {reader.line_num}")
                yield number, row
        except csv.Error as exc:
            raise JobFailure(f"InvalidBatch : {exc}") from None
    if header is None:
        yield None, ""


def _check_line_ending(first_line: str, line_ending: str) -> None:
    """[GUIDE] "Prepare CSV Files": the job's lineEnding must match the file's. The message is
    Salesforce's ClientInputError for it as recorded in a project's notes (find_string
    "LineEnding error naming LF or CRLF"); not grounded word for word."""
    crlf = first_line.endswith("\r\n")
    if first_line and (crlf != (line_ending == "\r\n") or not first_line.endswith("\n")):
        setting = "CRLF" if line_ending == "\r\n" else "LF"
        if first_line.endswith("\n"):
            raise JobFailure(f"ClientInputError : LineEnding is invalid on user data. Current "
                              f"LineEnding setting is {setting}")


def _results_csv(which: str, uploads: list[bytes], delimiter: str, outcome: bytearray, ids: list,
                 errors: dict[int, str], line_ending: str) -> tuple[str, int]:
    """One results CSV, built when asked for.

    [GUIDE] "Get Job Successful Record Results" examples and [RECORDED-MOHANC]: the two sf__
    columns quoted, then the uploaded header row as it was sent; every value of a data row
    quoted. The fake echoes the uploaded values as sent (Salesforce writes a double its own way,
    e.g. 912260031 as "9.12260031E8" in the guide's example). An unprocessed-records file is the
    uploaded header and rows ([RECORDED-MOHANC]: "Id,Phone"). Rows follow the upload order (the
    guide: the order "is not guaranteed"). Not grounded: the results' line ending for a CRLF job
    (the job's), and what Salesforce lists for data it could not read (the fake: the rows before
    the unreadable one).
    """
    out = io.StringIO()
    quoted = csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator=line_ending)
    plain = csv.writer(out, delimiter=delimiter, lineterminator=line_ending)
    first = {"successful": '"sf__Id","sf__Created"', "failed": '"sf__Id","sf__Error"'}.get(which)
    rows = _parse_uploads(uploads, delimiter, line_ending)
    try:
        header, header_line = next(rows)
    except JobFailure:
        header, header_line = None, ""
    if header is None:
        return (first + line_ending if first else ""), 0
    out.write((first + delimiter if first else "") + header_line + line_ending)
    count = 0
    try:
        for index, (_, row) in enumerate(rows):
            state = outcome[index] if index < len(outcome) else UNPROCESSED
            if which == "successful" and state in (CREATED, UPDATED):
                quoted.writerow([ids[index], "true" if state == CREATED else "false", *row])
            elif which == "failed" and state == FAILED:
                quoted.writerow([ids[index] or "", errors.get(index, ""), *row])
            elif which == "unprocessed" and state == UNPROCESSED:
                plain.writerow(row)
            else:
                continue
            count += 1
    except JobFailure:
        pass
    return out.getvalue(), count


# ---------------------------------------------------------------------- rows through the records


#: The XML schema type a CSV value is read as, by the fake's field type ("Failed to deserialize
#: field at col 3. Due to, 'x' is not a valid value for the type xsd:date", see write_batch).
_XSD = {"double": "xsd:double", "boolean": "xsd:boolean", "date": "xsd:date", "datetime": "xsd:dateTime"}


def plan_columns(fake: Any, sobject: str, operation: str, external_id: str | None,
                 header: list[str]) -> list[Column]:
    """What each header column is, or the job fails whole.

    [GUIDE] "Prepare CSV Files": each header is the field's name; "Relationship Fields in a Header
    Row (2.0)": ``RelationshipName.IndexedFieldName`` (``Mother_Of_Child__r.External_ID__c``). A
    column the object lacks, or the user cannot see, fails the job "InvalidBatch : Field name not
    found : <column>" ([RECORDED-AMPLABS]; the first such column only, as a project's notes found
    with find_string say: "the error names only the first missing column"). Not grounded: that a
    relationship column naming no relationship fails the same way (the fake says so).
    """
    with fake._lock:
        spec = fake._spec(sobject)
        return [_column(fake, spec, operation, external_id, name) for name in header]


def _column(fake: Any, spec: Any, operation: str, external_id: str | None, name: str) -> Column:
    if "." in name:
        rel, target_field = name.split(".", 1)
        found = fake._relationship(spec.name, rel)
        if (found is None or fake._hidden(spec, found[1])
                or (spec.fields is not None and fake._field(spec.name, found[1], register=False) not in spec.fields)
                or (found[0] or fake._infer_target(rel, target_field)) is None):
            raise JobFailure(f"InvalidBatch : Field name not found : {name}")
        return Column(name, "rel", fake._field(spec.name, found[1], register=False), rel, target_field)
    canon = fake._field(spec.name, name, register=False)
    if canon == "Id" and operation in ("update", "delete", "hardDelete"):
        return Column(name, "id", "Id")
    if operation == "upsert" and external_id and name.lower() == external_id.lower():
        return Column(name, "ext", canon)
    if ((spec.fields is not None and canon not in spec.fields) or fake._hidden(spec, canon)
            or fake.metadata.access(spec.name, canon) is None):
        raise JobFailure(f"InvalidBatch : Field name not found : {name}")
    return Column(name, "field", canon, type=spec.types.get(canon))


def write_batch(fake: Any, sobject: str, operation: str, external_id: str | None,
                plan: list[Column], rows: list[list[str]]) -> list[tuple[int, str | None, str | None]]:
    """One batch's rows through the fake's record writing: ``(outcome, id, sf__Error)`` a row.

    A row succeeds or fails as the same record in an sObject Collections upsert would (the same
    _write: required fields, rejections, field-level security, relationships by external id,
    UNABLE_TO_LOCK_ROW draws), duplicate external ids within the batch failing them all as within
    one collection. The fake's lock is held for a slice of rows at a time.
    """
    seen: dict[str, int] = {}
    with fake._lock:
        spec = fake._spec(sobject)
        ext_at = next((i for i, c in enumerate(plan) if c.kind == "ext"), None)
        if ext_at is not None:
            for row in rows:
                key = fake._key(spec, row[ext_at])
                if key is not None:
                    seen[key] = seen.get(key, 0) + 1
    out: list[tuple[int, str | None, str | None]] = []
    for start in range(0, len(rows), _SLICE):
        with fake._lock:
            for row in rows[start:start + _SLICE]:
                out.append(_write_row(fake, spec, operation, plan, row, seen))
    return out


def _write_row(fake: Any, spec: Any, operation: str, plan: list[Column], row: list[str],
               seen: dict[str, int]) -> tuple[int, str | None, str | None]:
    try:
        record, key = _record(plan, row)
    except _RowError as exc:
        return FAILED, "", error_text(exc.code, exc.message, exc.fields)
    if operation in ("delete", "hardDelete", "update"):
        found = fake._by_id(key) if key else None
        if found is None or found[0] is not spec:
            if not key and operation == "update":
                # Not grounded: the words for an update row without an Id.
                return FAILED, "", error_text("MISSING_ARGUMENT", "Id not specified in an update call", [])
            # "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--" for an unknown Id
            # (a failed-results row quoted in a project's skill notes found with find_string);
            # a delete of a record already gone says ENTITY_IS_DELETED (not grounded).
            code, text = (("ENTITY_IS_DELETED", "entity is deleted") if operation != "update"
                          else ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"))
            return FAILED, key or "", error_text(code, text, [])
        if operation != "update":
            fake._put(spec, found[1]["Id"], None, [])
            return UPDATED, found[1]["Id"], None
        return _written(fake._bulk_write(spec, record, record_id=found[1]["Id"]), found[1]["Id"])
    if operation == "upsert":
        if seen.get(fake._key(spec, key), 0) > 1:
            ext_field = next(c.field for c in plan if c.kind == "ext")
            return FAILED, "", error_text("DUPLICATE_EXTERNAL_ID",
                                          f"Duplicate external id specified: {key}", [ext_field])
        ext_field = next(c.field for c in plan if c.kind == "ext")
        return _written(fake._bulk_write(spec, record, match_field=ext_field, match_value=key or None), "")
    return _written(fake._bulk_write(spec, record), "")


def _written(answer: tuple, failed_id: str) -> tuple[int, str | None, str | None]:
    result, error = answer
    if error is not None:
        return FAILED, failed_id, error_text(*error)
    return (CREATED if result["created"] else UPDATED), result["id"], None


class _RowError(Exception):
    def __init__(self, code: str, message: str, fields: list[str]):
        super().__init__(message)
        self.code, self.message, self.fields = code, message, fields


def _record(plan: list[Column], row: list[str]) -> tuple[dict, str]:
    """The record a CSV row stands for, and its key (Id or external id value).

    [GUIDE] "Prepare CSV Files": "Empty field values are ignored when you update records. To set a
    field value to null, use a field value of #N/A." "Valid Date Format in Records (2.0)": dates
    yyyy-MM-dd, dateTimes yyyy-MM-ddTHH:mm:ss.SSS+/-HH:mm or Z. A value its field's type cannot
    take fails the row "INVALID_FIELD:Failed to deserialize field at col 3. Due to, 'x' is not a
    valid value for the type xsd:date:Birthdate --" (recorded import results quoted in two
    projects found with find_string).
    """
    record: dict[str, Any] = {}
    key = ""
    for number, (column, value) in enumerate(zip(plan, row), start=1):
        if column.kind in ("id", "ext"):
            key = value
            continue
        if value == "":
            continue
        if column.kind == "rel":
            record[column.field if value == "#N/A" else column.rel] = (
                None if value == "#N/A" else {column.target_field: value})
            continue
        record[column.name] = None if value == "#N/A" else _typed(column, value, number)
    return record, key


def _typed(column: Column, value: str, number: int) -> Any:
    kind = column.type
    try:
        if kind == "double":
            return int(value) if value.lstrip("-").isdigit() else float(value)
        if kind == "boolean":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if kind == "date":
            dt.date.fromisoformat(value)
        elif kind == "datetime":
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _RowError("INVALID_FIELD", f"Failed to deserialize field at col {number}. Due to, "
                                         f"'{value}' is not a valid value for the type {_XSD[kind]}",
                        [column.field]) from None
    return value
