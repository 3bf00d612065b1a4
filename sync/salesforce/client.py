"""The one module that calls Salesforce (through simple-salesforce), and what its answers mean for us.

Every answer is classified here, once: per record (``RecordResult``), a passing failure of the whole
call (``TransientError``: an outage, a time-out, an API limit, a session to renew), or a refusal of
the whole call that a person must fix (``CallRefused``: a field or object the org lacks, no
access, a session or login that cannot be renewed).

Every answer is also watched here, once (``_watch``, a response hook on the client's
``requests.Session``, which simple-salesforce uses for every call: login, REST, Collections,
describe, query, limits, Bulk API 2.0; and on the Metadata API's SOAP transport): each call is
counted by kind in ``metrics.SALESFORCE_CALLS``, and the org's API usage its
``Sforce-Limit-Info`` header carries is kept as ``client.usage``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
from simple_salesforce import Salesforce
from simple_salesforce import exceptions as sf_errors
from simple_salesforce.util import call_salesforce
from zeep import exceptions as zeep_errors
from zeep.helpers import serialize_object

from sync.core.clock import Clock, system_clock
from sync.core.errors import ConfigurationError, PermanentError, TransientError
from sync.ops import metrics
from sync.settings import SalesforceSettings

log = logging.getLogger(__name__)

#: sObject Collections take at most this many records a call.
COLLECTION_LIMIT = 200
TIMEOUT = 30
#: A Bulk API 2.0 request may carry up to 100 MB of CSV (an upload) or read as much (results).
BULK_TIMEOUT = 300
#: Per-record error codes worth trying again by themselves (after a pause).
TRANSIENT_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "API_CURRENTLY_DISABLED",
    "TXN_SECURITY_METERING_ERROR", "QUERY_TIMEOUT",
})


class CallRefused(PermanentError):
    """Salesforce refused a whole call: one error for every record in it.

    ``org_wide`` refusals (a session or login that cannot be renewed) stop every call, not just
    this object's; the others concern one object (its mapping names a field the org lacks, the
    user cannot access it...).
    """

    def __init__(self, code: str, message: str, *, org_wide: bool = False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.org_wide = org_wide

    def reason(self, object_name: str, mapping_path: str) -> str:
        """A sentence for the records' error, ``crm-errors`` and ``status``."""
        if self.org_wide:
            return self.message
        column = re.search(r"No such column '([^']+)'", self.message)
        if self.code == "INVALID_FIELD" and column:
            return (f"{object_name}: field {column.group(1)} does not exist in this org, or the integration "
                    f"user cannot see it ({mapping_path})")
        if self.code == "JSON_PARSER_ERROR":
            return f"{object_name}: a value does not fit its Salesforce field's type ({mapping_path}): {self.message}"
        if self.code.startswith("INSUFFICIENT_ACCESS"):
            return (f"{object_name}: the integration user has no access to this object or one of its fields "
                    f"({mapping_path}): {self.message}")
        if self.code == "NOT_FOUND":
            return (f"{object_name}: this org has no such object, or the mapping's external id field is not "
                    f"one of its external ids ({mapping_path})")
        return f"{object_name}: Salesforce refused the whole call: {self.code}: {self.message} ({mapping_path})"


@dataclass(frozen=True)
class RecordResult:
    """What Salesforce said about one record."""

    success: bool
    id: str | None = None
    created: bool | None = None
    code: str | None = None
    message: str | None = None

    @property
    def missing_parent(self) -> bool:
        """Salesforce does not have the parent this record refers to (yet)."""
        return self.code == "INVALID_FIELD" and "foreign key external id" in (self.message or "").lower()

    @property
    def parent(self) -> str | None:
        """The missing parent, as "Object/external id", when Salesforce named it."""
        found = _MISSING_PARENT.search(self.message or "") if self.missing_parent else None
        return f"{found.group(2)}/{found.group(1)}" if found else None

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES


_MISSING_PARENT = re.compile(r"Foreign key external ID: (.+?) not found for field \S+ in entity (\w+)")


@dataclass(frozen=True)
class MetadataResult:
    """One component's answer to an upsertMetadata call (UpsertResult: fullName, success,
    created, errors with statusCode and message)."""

    full_name: str
    success: bool
    created: bool = False
    code: str | None = None
    message: str | None = None


#: The Metadata API's CRUD calls take at most this many components (EXCEEDED_ID_LIMIT beyond).
METADATA_LIMIT = 10


@dataclass(frozen=True)
class ApiUsage:
    """The org's API requests in its rolling 24 hours (``used``) against its daily allowance, and
    when this was read (from an answer's ``Sforce-Limit-Info`` header, or ``GET limits``)."""

    used: int
    allowance: int
    read_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"used": self.used, "allowance": self.allowance, "read_at": self.read_at.isoformat(timespec="seconds")}


# "api-usage=18/5000", and other fields may follow ("; per-app-api-usage=17/250(appName=...)",
# "; api-bursts=1/750"): REST API Developer Guide, Limit Info Header. The lookbehind keeps
# per-app-api-usage from being read as the org's.
_API_USAGE = re.compile(r"(?<![\w-])api-usage=(\d+)/(\d+)")


def parse_limit_info(header: str | None, read_at: datetime) -> ApiUsage | None:
    """The org's usage in a ``Sforce-Limit-Info`` header; None when it carries none."""
    found = _API_USAGE.search(header or "")
    return ApiUsage(int(found.group(1)), int(found.group(2)), read_at) if found else None


#: How a call is named in ``metrics.SALESFORCE_CALLS``: (method or "*", path pattern under
#: /services/data/vXX.X/, kind); the object is the pattern's "object" group, if any.
_REST_KINDS = tuple((method, re.compile(pattern), kind) for method, pattern, kind in (
    ("PATCH", r"composite/sobjects/(?P<object>\w+)/\w+", metrics.UPSERT),
    ("*", r"composite(/.*)?", "composite"),
    ("DELETE", r"sobjects/(?P<object>\w+)/.+", metrics.DELETE),
    ("PATCH", r"sobjects/(?P<object>\w+)/\w+/.+", metrics.UPSERT),
    ("PATCH", r"sobjects/(?P<object>\w+)/\w+", "update"),
    ("POST", r"sobjects/(?P<object>\w+)", "create"),
    ("GET", r"sobjects(/(?P<object>\w+)(/describe)?)?", "describe"),
    ("GET", r"sobjects/(?P<object>\w+)/.+", "get"),
    ("GET", r"query(All)?(/.*)?", "query"),
    ("GET", r"limits", "limits"),
    ("POST", r"jobs/(ingest|query)", "bulk_create"),
    ("PUT", r"jobs/ingest/[^/]+/batches", "bulk_upload"),
    ("PATCH", r"jobs/(ingest|query)/[^/]+", "bulk_close"),
    ("GET", r"jobs/(ingest|query)/[^/]+", "bulk_status"),
    ("GET", r"jobs/(ingest|query)/[^/]+/\w+", "bulk_results"),
    ("DELETE", r"jobs/(ingest|query)/[^/]+", "bulk_delete"),
    ("GET", r"jobs/(ingest|query)", "bulk_list"),
))


def call_kind(method: str, url: str) -> tuple[str, str]:
    """(object, kind) of one request to Salesforce, for ``metrics.SALESFORCE_CALLS``: the object
    where the path names one, else ""."""
    path = unquote(urlsplit(url).path)
    path = path[path.find("/services/"):] if "/services/" in path else path  # a proxy's prefix dropped
    if path.startswith(("/services/Soap/u/", "/services/Soap/c/", "/services/oauth2/token")):
        return "", "login"
    if path.startswith("/services/oauth2/userinfo"):
        return "", "userinfo"
    if path.startswith("/services/Soap/m/"):
        return "", "metadata"
    rest = re.match(r"/services/data/v[\d.]+/?(.*?)/?$", path)
    if rest is None:
        return "", "other"
    for allowed, pattern, kind in _REST_KINDS:
        found = pattern.fullmatch(rest.group(1))
        if found and allowed in ("*", method.upper()):
            return (found.groupdict().get("object") or ""), kind
    return "", "other"


class SalesforceClient:
    """A connection to one org, logged in lazily and again when the session expires."""

    def __init__(self, settings: SalesforceSettings, session: requests.Session | None = None,
                 clock: Clock = system_clock):
        if not settings.enabled:
            raise ConfigurationError("Salesforce is not configured")
        self.settings = settings
        self.clock = clock
        #: The org's API usage, as the latest answer that carried it said; None until one did.
        self.usage: ApiUsage | None = None
        # requests honours REQUESTS_CA_BUNDLE, so a private CA can be trusted; verification stays on.
        self.session = session or requests.Session()
        self.session.hooks["response"].append(self._watch)
        self._sf: Salesforce | None = None

    def _watch(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Every answer of the org (the session's response hook): the call counted by kind, and
        the org's API usage its ``Sforce-Limit-Info`` header carries kept."""
        object_name, kind = call_kind(response.request.method or "", response.request.url or "")
        metrics.SALESFORCE_CALLS.inc(object=object_name, kind=kind)
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"), self.clock())
        if usage is not None:
            self.usage = usage

    def connect(self) -> Salesforce:
        if self._sf is None:
            self._sf = self._login()
        return self._sf

    def _login(self) -> Salesforce:
        s = self.settings
        common = {"session": self.session}
        try:
            if s.mode == "session":
                return Salesforce(instance_url=s.instance_url, session_id=s.session_id, **common)
            if s.mode == "password":
                return Salesforce(username=s.username, password=s.password, security_token=s.security_token,
                                  domain=s.domain, **common)
            if s.mode == "jwt":
                key = {"privatekey": s.private_key} if s.private_key else {"privatekey_file": s.private_key_file}
                return Salesforce(username=s.username, consumer_key=s.consumer_key, domain=s.domain, **key, **common)
            return Salesforce(consumer_key=s.consumer_key, consumer_secret=s.consumer_secret, domain=s.domain,
                              **common)
        except sf_errors.SalesforceAuthenticationFailed as exc:
            if str(exc.code).isdigit() and int(exc.code) >= 500:
                raise TransientError(f"Salesforce could not log in just now (HTTP {exc.code})") from exc
            raise CallRefused(
                "LOGIN_REFUSED",
                f"Salesforce refused the {s.mode.replace('_', ' ')} login ({_bounded(str(exc))}): check the "
                "SALESFORCE_ variables",
                org_wide=True,
            ) from exc
        except requests.RequestException as exc:
            raise TransientError(f"could not reach Salesforce to log in: {type(exc).__name__}") from exc

    def upsert(self, object_name: str, external_id_field: str, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        """Upsert up to 200 records by external id in one call; one result per record, in order.

        ``allOrNone`` is false: one bad record never holds back the others. Raises
        ``TransientError`` when the call as a whole should be tried again later.
        """
        if not records:
            return []
        if len(records) > COLLECTION_LIMIT:
            raise ValueError(f"at most {COLLECTION_LIMIT} records a call")
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": object_name}, **record} for record in records],
        }
        answer = self._call("PATCH", f"composite/sobjects/{object_name}/{external_id_field}", body)
        if not isinstance(answer, list) or len(answer) != len(records):
            raise TransientError(f"unexpected answer from Salesforce for {len(records)} {object_name} records")
        return [_result(item) for item in answer]

    def delete(self, object_name: str, external_id_field: str, value: str) -> RecordResult:
        """Delete one record by external id; a record Salesforce does not have counts as deleted."""
        try:
            self._call("DELETE", f"sobjects/{object_name}/{external_id_field}/{quote(value, safe='')}", None)
        except CallRefused as exc:
            if exc.code == "NOT_FOUND":  # already gone
                return RecordResult(True)
            if exc.org_wide:
                raise
            return RecordResult(False, code=exc.code, message=exc.message)
        return RecordResult(True)

    def describe(self, object_name: str) -> dict[str, Any] | None:
        """The object's sObject Describe (its fields as the integration user sees them); None when
        the org has no such object or the user cannot see it (Salesforce answers both 404
        NOT_FOUND). Raises ``CallRefused`` or ``TransientError`` when it cannot tell."""
        # simple-salesforce's SFType.describe() is this GET, but takes no time-out.
        path = f"sobjects/{object_name}/describe"
        try:
            return self._classified(path, lambda sf: sf.restful(path, method="GET", timeout=TIMEOUT))
        except CallRefused as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise

    def read_limits(self) -> ApiUsage:
        """The org's API usage now, from ``GET limits`` (DailyApiRequests: Max and Remaining); one
        call. Raises ``CallRefused`` (the user lacks View Setup and Configuration) or
        ``TransientError``."""
        answer = self._classified("limits", lambda sf: sf.limits(timeout=TIMEOUT))
        daily = answer.get("DailyApiRequests") if isinstance(answer, dict) else None
        try:
            allowance, remaining = int(daily["Max"]), int(daily["Remaining"])
        except (TypeError, KeyError, ValueError) as exc:
            raise TransientError("Salesforce's limits answer has no DailyApiRequests") from exc
        self.usage = ApiUsage(max(0, allowance - remaining), allowance, self.clock())
        return self.usage

    def upsert_metadata(self, kind: str, items: Sequence[dict[str, Any]]) -> list[MetadataResult]:
        """Upsert up to 10 components of one Metadata API type (``CustomObject``, ``CustomField``,
        ``PermissionSet``) through simple-salesforce's ``mdapi``; one result per component.

        Raises ``CallRefused`` when Salesforce refuses the call as a whole (its SOAP fault: no
        permission to modify metadata, an invalid session), ``TransientError`` when it is away."""
        if len(items) > METADATA_LIMIT:
            raise ValueError(f"at most {METADATA_LIMIT} components a call")
        md = self.connect().mdapi
        answer = self._metadata("upsertMetadata", [getattr(md, kind)(**item) for item in items])
        return [_metadata_result(r) for r in answer]

    def read_metadata(self, kind: str, full_names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The components of ``kind`` the org has among up to 10 ``full_names`` (readMetadata:
        a name the org lacks answers a record without fullName), as dicts by full name."""
        if len(full_names) > METADATA_LIMIT:
            raise ValueError(f"at most {METADATA_LIMIT} components a call")
        records = self._metadata("readMetadata", kind, list(full_names))
        found = [serialize_object(r, dict) for r in (records or [])]
        return {str(r["fullName"]): r for r in found if r.get("fullName")}

    def _metadata(self, operation: str, *args: Any) -> Any:
        """One Metadata API CRUD call through simple-salesforce's ``mdapi``, its SOAP fault (the
        call refused as a whole: no permission to modify metadata, too many components, a bad
        session) as ``CallRefused``."""
        md = self.connect().mdapi
        # simple-salesforce's zeep client has a session of its own (not ours): watch it too.
        transport = md._client.transport.session.hooks["response"]
        if self._watch not in transport:
            transport.append(self._watch)
        try:
            # MetadataType.upsert()/read() raise a bare Exception on a failed component and
            # return nothing; the service's results (UpsertResult, ReadResult) are what we report
            # from, so call it as they do.
            return getattr(md._service, operation)(*args, _soapheaders=[md._session_header])
        except zeep_errors.Fault as exc:
            code = str(exc.code or "").rpartition(":")[2] or "ERROR"
            raise CallRefused(code, _bounded(str(exc.message)), org_wide=True) from exc
        except requests.RequestException as exc:
            raise TransientError(f"could not reach Salesforce: {type(exc).__name__}") from exc

    def assign_permission_set(self, name: str) -> bool:
        """Assign the permission set ``name`` to the logged-in user; False when it already was."""
        user = self._classified("userinfo", lambda sf: sf.oauth2("userinfo"))["user_id"]
        found = self._classified("query", lambda sf: sf.query(
            f"SELECT Id FROM PermissionSet WHERE Name = '{_soql(name)}'"))["records"]
        if not found:
            raise CallRefused("NOT_FOUND", f"the org has no permission set {name}")
        assigned = self._classified("query", lambda sf: sf.query(
            "SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = "
            f"'{_soql(user)}' AND PermissionSetId = '{_soql(found[0]['Id'])}'"))["totalSize"]
        if assigned:
            return False
        body = {"AssigneeId": user, "PermissionSetId": found[0]["Id"]}
        self._call("POST", "sobjects/PermissionSetAssignment/", body)
        return True

    def _call(self, method: str, path: str, body: Any) -> Any:
        kwargs: dict[str, Any] = {"timeout": TIMEOUT}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        return self._classified(path, lambda sf: sf.restful(path, method=method, **kwargs))

    def _classified(self, path: str, call: Callable[[Salesforce], Any]) -> Any:
        """``call`` on the logged-in connection, its failures classified."""
        sf = self.connect()
        try:
            return call(sf)
        except sf_errors.SalesforceExpiredSession as exc:
            # simple-salesforce logs in again by itself where it can; here it could not.
            if not self.settings.renewable:
                raise CallRefused(
                    "INVALID_SESSION_ID",
                    "the Salesforce session expired and SALESFORCE_SESSION_ID cannot be renewed: set a new one, "
                    "or configure a login (password, JWT or client credentials)",
                    org_wide=True,
                ) from exc
            self._sf = None
            raise TransientError("Salesforce session expired; logging in again") from exc
        except sf_errors.SalesforceRefusedRequest as exc:
            code = _first_code(exc.content)
            if code == "REQUEST_LIMIT_EXCEEDED":
                raise TransientError("Salesforce API request limit reached") from exc
            raise CallRefused(code, _first_message(exc.content)) from exc
        except sf_errors.SalesforceMalformedRequest as exc:
            raise CallRefused(_first_code(exc.content), _first_message(exc.content)) from exc
        except sf_errors.SalesforceResourceNotFound as exc:
            raise CallRefused("NOT_FOUND", _first_message(exc.content)) from exc
        except sf_errors.SalesforceError as exc:  # 5xx and the rest: Salesforce is having trouble
            raise TransientError(f"Salesforce answered {exc.status} to {path}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"could not reach Salesforce: {type(exc).__name__}") from exc

    # -- Bulk API 2.0 (sync.salesforce.bulk speaks it; the answers are classified here) ----------

    def bulk_request(self, method: str, path: str, *, data: Any = None, content_type: str = "application/json",
                     accept: str = "application/json", stream: bool = False) -> requests.Response:
        """One Bulk API 2.0 request (``path`` under ``jobs/``) on the logged-in session, its
        failures classified like every other call's.

        simple-salesforce's ``bulk2`` does not renew an expired session; this does as its REST
        calls do: log in again and repeat the request once (a file ``data`` is read again from
        its start). A session that cannot be renewed is the org-wide ``CallRefused``.
        """
        def call(sf: Salesforce) -> requests.Response:
            try:
                return self._bulk_once(sf, method, path, data, content_type, accept, stream)
            except sf_errors.SalesforceExpiredSession:
                if not self.settings.renewable:
                    raise
                self._sf = None  # log in again (a refused login is classified by _login), once
                return self._bulk_once(self.connect(), method, path, data, content_type, accept, stream)

        return self._classified(f"jobs/{path}", call)

    def _bulk_once(self, sf: Salesforce, method: str, path: str, data: Any, content_type: str, accept: str,
                   stream: bool) -> requests.Response:
        if hasattr(data, "seek"):
            data.seek(0)
        headers = {**sf.headers, "Content-Type": content_type, "Accept": accept}
        return call_salesforce(f"{sf.bulk2_url}{path}", method, self.session, headers, data=data,
                               timeout=BULK_TIMEOUT, stream=stream)


def _result(item: dict[str, Any]) -> RecordResult:
    if item.get("success"):
        return RecordResult(True, id=item.get("id"), created=item.get("created"))
    errors = item.get("errors") or [{}]
    first = errors[0]
    code = first.get("statusCode") or first.get("errorCode") or "UNKNOWN"
    return RecordResult(False, id=item.get("id"), code=code, message=without_values(first.get("message") or ""))


def _metadata_result(item: Any) -> MetadataResult:
    errors = item["errors"] or []
    if item["success"]:
        return MetadataResult(str(item["fullName"]), True, created=bool(item["created"]))
    first = errors[0] if errors else {"statusCode": "UNKNOWN", "message": ""}
    return MetadataResult(str(item["fullName"]), False, code=str(first["statusCode"]),
                          message=without_values(str(first["message"] or "")))


def _soql(value: str) -> str:
    """A value inside a SOQL string literal (backslash and quote escaped)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _first_code(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or content[0].get("statusCode") or "ERROR")
    return "ERROR"


def _first_message(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return without_values(str(content[0].get("message", "")))
    return without_values(str(content))


#: Where Salesforce's messages echo a record's value: the value is replaced by "…".
_ECHOED_VALUES = (
    re.compile(r"(value )(.*?)( or request may be missing)", re.S),  # JSON_PARSER_ERROR
    re.compile(r"(invalid email address: )(\S.*?)$", re.S),  # INVALID_EMAIL_ADDRESS
    re.compile(r"(data value too large: )(.*?)( \(max length=\d+\))", re.S),  # STRING_TOO_LONG
    re.compile(r"(bad value for restricted picklist field: )(.*?)$", re.S),  # restricted picklists
    re.compile(r"(invalid (?:date|datetime|number|double|boolean|integer|currency)[a-z ]*: )(.*?)$",
               re.S | re.I),  # "Value for field ... invalid date: X" and kin
)


def without_values(message: str) -> str:
    """Salesforce's message, bounded, with any record value it quotes replaced by "…"."""
    for pattern in _ECHOED_VALUES:
        message = pattern.sub(lambda m: m.group(1) + "…" + (m.group(3) if m.lastindex >= 3 else ""), message)
    return _bounded(message)


def _bounded(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
