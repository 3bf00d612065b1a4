"""A local HTTPS stand-in for the parts of Salesforce that partnero-sync talks to.

The real ``simple-salesforce`` library runs its own code path against it: TLS with a verified
certificate, the SOAP and OAuth 2.0 logins, bearer tokens, the REST resources for upserts by
external id, sObject Collections, SOQL queries and limits, and Bulk API 2.0 ingest (``sf.bulk2``).
Records live in memory.

Start it as a context manager (or with ``start()``/``stop()``). It serves the test CA's
certificate for 127.0.0.1/localhost (tests/fakes/tls.py: one CA for every stand-in in the
process), listens on a free loopback port and exposes:

* ``instance_url`` -- ``https://127.0.0.1:PORT``
* ``ca_bundle`` -- path of the test CA's certificate (PEM). Clients keep TLS verification ON and
  trust it through ``REQUESTS_CA_BUNDLE`` (``requests`` reads it on every request; note that
  the variable wins over ``Session.verify``).
* ``login_domain`` -- ``127.0.0.1:PORT/login``: pass it as simple-salesforce's ``domain`` and
  its login URL ``https://{domain}.salesforce.com/...`` becomes
  ``https://127.0.0.1:PORT/login.salesforce.com/...``; the fake ignores a first path segment
  ending in ``.salesforce.com``. Works for the SOAP, password, JWT and client-credentials logins.
* ``login_session()`` -- a ``requests.Session`` that sends requests for
  ``https://login.salesforce.com`` and ``https://test.salesforce.com`` to the fake, so the
  default ``domain="login"``/``"test"`` works unchanged (pass it as ``session=``).
* ``issue_session()`` -- a valid access token, for ``Salesforce(instance_url=..., session_id=...)``.
* ``metadata`` -- the Metadata API (``sf.mdapi``): custom objects, fields and permission sets,
  field-level security from assigned permission sets (tests/fakes/salesforce_metadata.py);
  ``GET /services/oauth2/userinfo`` names the user (``user_id``) to assign them to.
* ``bulk`` -- Bulk API 2.0 ingest under ``/services/data/vXX.X/jobs/ingest``
  (tests/fakes/salesforce_bulk.py, which names where each shape is grounded): create a job
  (insert, upsert, update, delete, hardDelete), upload CSV, UploadComplete or Aborted, job info,
  the job list, delete, and the successfulResults, failedResults and unprocessedrecords CSVs. A
  closed job is processed in a background thread, 10,000 rows to a batch, each row written as the
  same record in an sObject Collections upsert would be (so ``reject``, required fields,
  field-level security, relationships by external id and UNABLE_TO_LOCK_ROW draws apply), its
  error in ``sf__Error``'s ``CODE:message:Field --``. Every bulk request goes through the same REST
  path as the others: a session, the API allowance and ``Sforce-Limit-Info``, outages, ``fail_rate``.

The pytest pattern (see tests/test_fake_salesforce.py)::

    @pytest.fixture
    def fake_salesforce(monkeypatch):
        with FakeSalesforce() as fake:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_bundle)
            yield fake

    def test_something(fake_salesforce):
        fake = fake_salesforce
        fake.define_object("Partnero_Transaction__c")
        fake.relationships[("Partnero_Transaction__c", "Partnero_Partner__r")] = (
            "Contact", "Partnero_Partner_Id__c")
        sf = Salesforce(instance_url=fake.instance_url, session_id=fake.issue_session())
        sf.Contact.upsert("Partnero_Partner_Id__c/ptn_1", {"LastName": "Doe"})   # -> 201
        assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_1")["LastName"] == "Doe"

Behaviour modelled (switches are thread-safe and may change while clients run):

* ``latency`` seconds added to every request; ``outage`` = ``None`` | ``"503"`` (every request
  answers 503 SERVER_UNAVAILABLE) | ``"refuse"`` (the listening socket is closed: connection
  refused; open connections are cut) | ``"drop"`` (connections are accepted, then reset without
  an answer). Setting ``outage = None`` reopens the same port.
* ``fail_rate`` (0..1) with ``fail_with``: ``"SERVER_UNAVAILABLE"`` (503), ``"REQUEST_LIMIT_EXCEEDED"``
  (403), ``"UNABLE_TO_LOCK_ROW"`` (per record in writes), or a tuple ``(status, errorCode,
  message)``. Draws come from ``random.Random(seed)``, so a single client sees a reproducible
  sequence.
* ``expire_sessions()``: every token issued so far answers 401 INVALID_SESSION_ID; logins still work.
* ``reject(predicate, code, message, ...)``: records for which ``predicate(record)`` is true fail
  with that error code (``record`` is the incoming record: its fields, the external id, and
  ``attributes.type``).
* ``api_max``/``api_remaining``: REST calls use up the daily allowance (``GET limits`` shows it,
  the ``Sforce-Limit-Info`` header carries it); at zero, calls answer 403 REQUEST_LIMIT_EXCEEDED.
* Whole-call refusals, as Salesforce answers them before it looks at any record: a field the
  object lacks (with ``define_object(..., fields=[...])``) or a relationship it lacks is one 400
  INVALID_FIELD "No such column ..." for the whole request; a value not of its field's type
  (``define_object(..., types={"Amount__c": "double"})``) is one 400 JSON_PARSER_ERROR;
  ``deny(obj)`` makes every call on the object a 403 INSUFFICIENT_ACCESS (``allow(obj)`` undoes
  it); an object the org lacks is a 404 NOT_FOUND.
* Describe (``GET sobjects/{name}/describe``) lists each field with Salesforce's attributes
  (type, length, precision, scale, externalId, unique, createable, updateable, nillable,
  defaultedOnCreate, relationshipName, referenceTo): the standard objects' system and required
  fields, and what ``add_field(obj, name, kind, ...)`` creates as an admin would in Setup
  (writes then take the field, read as its type). ``FakeSalesforce(fresh=True)`` is an org as it
  comes: the standard objects take only their standard fields. ``hide_field(obj, name)`` is
  field-level security: the field is absent from describe and a write naming it is refused
  (INVALID_FIELD "No such column"); ``add_field(..., writable=False)`` a field the user can read
  only (INVALID_FIELD_FOR_INSERT_UPDATE). tests/salesforce_orgs.py sets an org up for the
  shipped mappings.
* Required fields (Contact.LastName, Account.Name, ...), optional allowed-field sets, external
  id matching (case-insensitive unless ``case_sensitive_ids``), relationships by external id
  (``"Rel__r": {"Ext__c": "v"}``) resolved to the lookup field, duplicate external ids within a
  collection, ``allOrNone`` roll-back, the 200-record collection limit (EXCEEDED_ID_LIMIT).
* Bulk API 2.0 switches (``fake.bulk``, thread-safe): ``hold()`` keeps closed jobs in
  UploadComplete, and stops one InProgress before its next batch, until ``release()`` (a test can
  kill a worker mid-job); ``processing_delay``
  seconds before a closed job is processed (0.05); ``fail_next(message)``: the next job processed
  ends Failed with that errorMessage, every row unprocessed; ``max_upload_base64`` (150 MB, the
  limit on a job's uploads, base64-encoded); ``daily_batches`` (15,000, DailyBulkApiBatches in
  ``GET limits``); ``list_page`` (1,000 jobs a page of the job list). Observing:
  ``fake.bulk.jobs()`` (id, object, operation, state, records, uploads, processed, failed, error),
  ``fake.bulk.wait(job_id)`` (until a final state), ``fake.bulk.batches_used``.

Observing: ``calls`` (the newest ``max_calls`` requests as :class:`Call`: method, path, records,
kind, status, detail; login-host prefixes and query strings are not part of ``path``),
``count(kind)`` for kinds ``login``, ``metadata``, ``upsert``, ``collections``, ``query``, ``limits``, ``get``,
``create``, ``update``, ``delete``, ``describe``, ``outage``, ``rest``, and for Bulk API 2.0
``bulk_create``, ``bulk_upload``, ``bulk_close``, ``bulk_abort``, ``bulk_status``, ``bulk_results``,
``bulk_list``, ``bulk_delete``; ``records(obj)``,
``get(obj, field, value)``, ``get_by_id(id)`` (stored records carry ``Id``, ``CreatedDate``,
``LastModifiedDate`` and ``SystemModstamp`` besides their fields, bulk rows' records too); seed
data with ``add(obj, fields)``; ``connections_accepted``; ``reset()`` (bulk jobs too).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import json
import random
import re
import secrets
import socket
import socketserver
import ssl
import string
import struct
import threading
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes import tls
from tests.fakes.salesforce_bulk import BulkAnswer, BulkError, BulkIngest
from tests.fakes.salesforce_metadata import METADATA_PATH, MetadataApi

__all__ = ["Call", "FakeSalesforce", "ObjectSpec", "Rejection"]

MAX_COLLECTION_RECORDS = 200
PARTNER_NS = "urn:partner.soap.sforce.com"
JSON_TYPE = "application/json;charset=UTF-8"
XML_TYPE = "text/xml;charset=UTF-8"

_DATA_PATH = re.compile(r"^/services/data/v(\d+\.\d+)(?:/(.*))?$")
_DATA_ROOT = re.compile(r"^/services/data/?$")
_SOAP_PATH = re.compile(r"^/services/Soap/u/(\d+\.\d+)/?$")
_LOGIN_HOST_SEGMENT = re.compile(r"^/[^/]+\.salesforce\.com(?=/)")
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_STANDARD_FIELDS = ("Id", "CreatedDate", "LastModifiedDate", "SystemModstamp")
_STANDARD_RELATIONSHIPS = {"Account", "Contact", "Opportunity", "Lead", "Parent"}
_NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
_INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
_ROLLED_BACK = ("ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request was using "
                "AllOrNone header")
_FAILURE_MODES = {
    "SERVER_UNAVAILABLE": (503, "SERVER_UNAVAILABLE", "Server temporarily unavailable"),
    "503": (503, "SERVER_UNAVAILABLE", "Server temporarily unavailable"),
    "REQUEST_LIMIT_EXCEEDED": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    "403": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    "UNABLE_TO_LOCK_ROW": (None, "UNABLE_TO_LOCK_ROW",
                           "unable to obtain exclusive access to this record or 1 records: {id}"),
}
_OUTAGES = (None, "503", "refuse", "drop")


# --------------------------------------------------------------------------------------------
# Public value types


@dataclass
class ObjectSpec:
    """What the fake knows of one sObject type."""

    name: str
    prefix: str
    #: Fields that must be non-empty on every stored record (REQUIRED_FIELD_MISSING otherwise).
    required: tuple[str, ...] = ()
    #: Allowed fields; ``None`` allows any (unknown field -> INVALID_FIELD otherwise).
    fields: frozenset[str] | None = None
    #: Fields usable as external ids in URLs; ``None`` allows any field.
    external_ids: frozenset[str] | None = None
    #: Salesforce matches text external ids case-insensitively unless the field says otherwise.
    case_sensitive_ids: bool = False
    #: Field types the JSON body is read as (``double``, ``boolean``, ``date``, ``datetime``,
    #: ``string``); a value that is not of its field's type refuses the whole call with
    #: JSON_PARSER_ERROR, as Salesforce's deserializer does.
    types: dict[str, str] = field(default_factory=dict)
    #: What describe says of each field, by lower-case name (``add_field`` and the standard ones).
    described: dict[str, dict] = field(default_factory=dict)
    #: Fields the integration user cannot see (field-level security), by lower-case name: absent
    #: from describe, and a write naming one is refused as Salesforce refuses a field it lacks.
    hidden: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------------------------
# sObject Describe's field attributes. The names and meanings are Salesforce's Field type of the
# describe result (REST API Developer Guide, "Get Field and Other Metadata for an Object",
# developer.salesforce.com/docs/platform/api-rest/guide/dome-sobject-describe, whose example
# shows Id as {"length": 18, "name": "Id", "type": "id", "updateable": false, ...}; SOAP API
# Developer Guide, "DescribeSObjectResult" > "Field", for every attribute): type (string,
# textarea, double, currency, percent, int, date, datetime, boolean, reference, id, email, url,
# phone, picklist), length (characters of text types, 18 for id and reference, else 0),
# precision and scale (numbers only, else 0), externalId, unique, createable, updateable,
# nillable, defaultedOnCreate, relationshipName (a custom lookup's ends in __r) and referenceTo
# (a list of object names; empty unless a reference). An object the org lacks, or the user
# cannot see, answers 404 NOT_FOUND (REST API Developer Guide, "Status Codes and Error Responses").

_TEXT_TYPES = ("string", "textarea", "email", "url", "phone", "picklist", "multipicklist", "encryptedstring")
#: What the REST reader checks a value against (``_of_type``), by describe type.
_READ_AS = {"double": "double", "currency": "double", "percent": "double", "int": "double",
            "boolean": "boolean", "date": "date", "datetime": "datetime"}


def _described(name: str, kind: str = "string", *, length: int | None = None, precision: int = 0,
               scale: int = 0, external_id: bool = False, unique: bool = False, createable: bool = True,
               updateable: bool | None = None, nillable: bool = True, defaulted: bool = False,
               reference_to: tuple[str, ...] = (), relationship_name: str | None = None) -> dict:
    """One field as describe lists it."""
    if length is None:
        length = (255 if kind in _TEXT_TYPES else 18 if kind in ("id", "reference") else 0)
    text = kind in _TEXT_TYPES
    return {"name": name, "label": name.removesuffix("__c").replace("_", " "), "type": kind,
            "length": length, "byteLength": 3 * length,
            "precision": precision, "scale": scale, "digits": 0, "externalId": external_id, "unique": unique,
            "idLookup": kind == "id" or external_id, "createable": createable,
            "updateable": createable if updateable is None else updateable, "nillable": nillable,
            "defaultedOnCreate": defaulted, "custom": name.endswith("__c"), "calculated": False,
            "nameField": name == "Name", "caseSensitive": False, "referenceTo": list(reference_to),
            "relationshipName": relationship_name, "soapType": f"xsd:{kind}"}


def _system_fields() -> list[dict]:
    """What every object has: its Id, owner and audit fields, none of which the API writes
    (OwnerId is createable but defaulted to the user creating the record)."""
    audit = {"createable": False, "updateable": False, "nillable": False, "defaulted": True}
    return [_described("Id", "id", **audit),
            _described("OwnerId", "reference", nillable=False, defaulted=True, reference_to=("User",),
                       relationship_name="Owner"),
            _described("IsDeleted", "boolean", **audit),
            *(_described(name, "datetime", **audit) for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp")),
            *(_described(name, "reference", **audit, reference_to=("User",), relationship_name=name[:-2])
              for name in ("CreatedById", "LastModifiedById"))]


#: The standard objects' own fields that matter to a writer: the required ones (nillable false,
#: no default: Salesforce's Contact, Account, Lead and Opportunity object references) and the ones
#: the shipped mappings write, with their lengths from the same references.
_STANDARD_DESCRIBED = {
    "Account": [_described("Name", length=255, nillable=False), _described("Phone", "phone", length=40),
                _described("Website", "url", length=255), _described("Description", "textarea", length=32000)],
    "Contact": [_described("LastName", length=80, nillable=False), _described("FirstName", length=40),
                _described("Email", "email", length=80), _described("Phone", "phone", length=40),
                _described("AccountId", "reference", reference_to=("Account",), relationship_name="Account")],
    "Lead": [_described("LastName", length=80, nillable=False), _described("Company", length=255, nillable=False),
             _described("Email", "email", length=80)],
    "Opportunity": [_described("Name", length=120, nillable=False),
                    _described("StageName", "picklist", length=255, nillable=False),
                    _described("CloseDate", "date", nillable=False),
                    _described("Amount", "currency", precision=18, scale=2)],
}
#: A custom object's Name (a Text(80) name field): a create may leave it out.
_CUSTOM_NAME = _described("Name", length=80)


class Call(NamedTuple):
    """One request the fake answered (connections refused never reach it)."""

    method: str
    path: str
    #: Records sent (upsert 1, collections n) or returned (query, get).
    records: int
    kind: str
    status: int
    #: The SOQL of a query, the grant or ``soap`` of a login, the error code of a failure.
    detail: str = ""


@dataclass
class Rejection:
    """A rule made by :meth:`FakeSalesforce.reject`; remove it with ``fake.unreject(rule)``."""

    predicate: Callable[[dict], bool]
    code: str
    message: str
    fields: tuple[str, ...] = ()
    sobject: str | None = None
    #: How many more records it fails; ``None`` for no limit.
    times: int | None = None


# --------------------------------------------------------------------------------------------
# Internal helpers


class _RecordError(Exception):
    def __init__(self, code: str, message: str, fields: tuple[str, ...] | list[str] = ()):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fields = code, message, list(fields)

    def for_collection(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def for_rest(self) -> dict:
        return {"message": self.message, "errorCode": self.code, "fields": self.fields}


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict = field(default_factory=dict)
    kind: str = "rest"
    records: int = 0
    detail: str = ""


class _HttpError(Exception):
    def __init__(self, status: int, payload: Any, detail: str = ""):
        super().__init__(status)
        self.status, self.payload = status, payload
        self.detail = detail or _error_code(payload)


def _error_code(payload: Any) -> str:
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        return str(payload[0].get("errorCode", ""))
    return ""


_DROP = object()  # reset the connection without an answer


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _reply(status: int, payload: Any = None, **kw: Any) -> _Reply:
    body = b"" if payload is None else _json_bytes(payload)
    return _Reply(status, body, **kw)


def _of_type(kind: str, value: Any) -> bool:
    """Whether Salesforce's JSON reader takes ``value`` for a field of type ``kind``."""
    if kind == "double":
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return True
        try:
            float(value)
        except (TypeError, ValueError):
            return False
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if kind in ("date", "datetime"):
        if not isinstance(value, str):
            return False
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    return not isinstance(value, dict | list)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _with_checksum(id15: str) -> str:
    """Salesforce's 18-character id: three letters telling where the capitals are."""
    suffix = ""
    alphabet = string.ascii_uppercase + "012345"
    for chunk in range(3):
        part = id15[chunk * 5:(chunk + 1) * 5]
        bits = sum(1 << i for i, ch in enumerate(part) if "A" <= ch <= "Z")
        suffix += alphabet[bits]
    return id15 + suffix


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    return digits.rjust(width, "0")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hard_close(conn: socket.socket) -> None:
    """Close with a TCP reset rather than an orderly FIN."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# SOQL (the subset the tests need)

_SOQL_TOKEN = re.compile(
    r"\s*(?:('(?:[^'\\]|\\.)*')|(<=|>=|!=|<>|=|<|>)|([(),])|([^\s'(),=<>!]+))")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_SOQL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "'": "'", '"': '"',
                 "\\": "\\", "_": "\\_", "%": "\\%"}


@dataclass
class _Soql:
    fields: list[str] | None  # None for SELECT COUNT()
    sobject: str
    where: list[tuple[str, str, Any]]
    order: list[tuple[str, bool, bool]]  # field, descending, nulls last
    limit: int | None
    offset: int


def _malformed(message: str) -> _HttpError:
    return _HttpError(400, [{"message": message, "errorCode": "MALFORMED_QUERY"}])


def _soql_tokens(text: str) -> list[tuple[str, Any]]:
    text, pos, out = text.strip(), 0, []
    while pos < len(text):
        match = _SOQL_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise _malformed(f"unexpected token at: {text[pos:pos + 20]!r}")
        literal, op, punct, word = match.groups()
        if literal is not None:
            out.append(("str", re.sub(r"\\(.)", lambda m: _SOQL_ESCAPES.get(m.group(1), m.group(1)),
                                      literal[1:-1])))
        elif op:
            out.append(("op", "!=" if op == "<>" else op))
        elif punct:
            out.append(("punct", punct))
        else:
            out.append(("word", word))
        pos = match.end()
    return out


def _soql_literal(kind: str, value: str) -> Any:
    if kind == "str":
        return value
    lowered = value.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.match(value):
        return float(value) if "." in value else int(value)
    return value  # date and datetime literals compare as text


def _parse_soql(text: str) -> _Soql:
    tokens = _soql_tokens(text)
    pos = 0

    def peek(offset: int = 0) -> tuple[str, Any] | None:
        return tokens[pos + offset] if pos + offset < len(tokens) else None

    def keyword(*words: str) -> bool:
        nonlocal pos
        for i, word in enumerate(words):
            token = peek(i)
            if token is None or token[0] != "word" or token[1].upper() != word:
                return False
        pos += len(words)
        return True

    def take(kind: str, value: str | None = None) -> Any:
        nonlocal pos
        token = peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise _malformed(f"expected {value or kind} in: {text}")
        pos += 1
        return token[1]

    def literal() -> Any:
        nonlocal pos
        token = peek()
        if token is None or token[0] not in ("str", "word"):
            raise _malformed(f"expected a value in: {text}")
        pos += 1
        return _soql_literal(*token)

    if not keyword("SELECT"):
        raise _malformed("a query starts with SELECT")
    fields: list[str] | None
    if keyword("COUNT"):
        take("punct", "(")
        take("punct", ")")
        fields = None
    else:
        fields = [take("word")]
        while peek() == ("punct", ","):
            pos += 1
            fields.append(take("word"))
    if not keyword("FROM"):
        raise _malformed(f"expected FROM in: {text}")
    sobject = take("word")
    where: list[tuple[str, str, Any]] = []
    if keyword("WHERE"):
        while True:
            name = take("word")
            if keyword("NOT", "IN") or keyword("IN"):
                op = "NOT IN" if tokens[pos - 2][1].upper() == "NOT" else "IN"
                take("punct", "(")
                values = [literal()]
                while peek() == ("punct", ","):
                    pos += 1
                    values.append(literal())
                take("punct", ")")
                where.append((name, op, values))
            elif keyword("LIKE"):
                where.append((name, "LIKE", literal()))
            else:
                where.append((name, take("op"), literal()))
            if keyword("AND"):
                continue
            if peek() is not None and peek()[0] == "word" and peek()[1].upper() == "OR":
                raise _malformed("this fake understands AND between conditions, not OR")
            break
    order: list[tuple[str, bool, bool]] = []
    if keyword("ORDER", "BY"):
        while True:
            name = take("word")
            descending = keyword("DESC")
            if not descending:
                keyword("ASC")
            nulls_last = descending
            if keyword("NULLS", "FIRST"):
                nulls_last = False
            elif keyword("NULLS", "LAST"):
                nulls_last = True
            order.append((name, descending, nulls_last))
            if peek() != ("punct", ","):
                break
            pos += 1

    def count() -> int:
        word = take("word")
        if not word.isdigit():
            raise _malformed(f"expected a number, not {word!r}, in: {text}")
        return int(word)

    limit = count() if keyword("LIMIT") else None
    offset = count() if keyword("OFFSET") else 0
    if pos != len(tokens):
        raise _malformed(f"unexpected token {tokens[pos][1]!r} in: {text}")
    return _Soql(fields, sobject, where, order, limit, offset)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _soql_equal(stored: Any, wanted: Any) -> bool:
    if stored is None or wanted is None:
        return stored is None and wanted is None
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return stored == wanted
    if _is_number(stored) or _is_number(wanted):
        try:
            return float(stored) == float(wanted)
        except (TypeError, ValueError):
            return False
    return str(stored).casefold() == str(wanted).casefold()  # text compares ignoring case


def _sort_key(value: Any) -> tuple:
    if _is_number(value):
        return (0, float(value), "")
    return (1, 0.0, str(value).casefold())


def _soql_match(stored: Any, op: str, wanted: Any) -> bool:
    if op == "=":
        return _soql_equal(stored, wanted)
    if op == "!=":
        return not _soql_equal(stored, wanted)
    if op == "IN":
        return any(_soql_equal(stored, item) for item in wanted)
    if op == "NOT IN":
        return not any(_soql_equal(stored, item) for item in wanted)
    if op == "LIKE":
        if stored is None or wanted is None:
            return False
        pattern = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
                          for ch in str(wanted))
        return re.fullmatch(pattern, str(stored), re.IGNORECASE | re.DOTALL) is not None
    if stored is None or wanted is None:
        return False
    left, right = _sort_key(stored), _sort_key(wanted)
    return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(tls.TLSServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, fake: "FakeSalesforce", context: ssl.SSLContext):
        self.fake = fake
        super().__init__(_Handler, context)

    def process_request(self, request, client_address) -> None:
        self.fake._spawn(request, client_address)

    def server_close(self) -> None:
        socketserver.TCPServer.server_close(self)


class _Handler(tls.TLSHandler):
    server_version = "FakeSalesforce/1.0"

    def setup(self) -> None:
        self.timeout = self.server.fake.idle_timeout
        super().setup()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_GET

    def _dispatch(self) -> None:
        fake: FakeSalesforce = self.server.fake
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._write(_reply(411, [{"errorCode": "LENGTH_REQUIRED",
                                      "message": "Send a Content-Length"}]))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > fake._body_limit(self.command, self.path):
            self.close_connection = True
            self._write(_reply(413, [{"errorCode": "REQUEST_TOO_LARGE",
                                      "message": "The request body is too large"}]))
            return
        body = self.rfile.read(length) if length else b""
        outcome = fake._serve(self.command, self.path, self.headers, body)
        if outcome is _DROP:
            self.close_connection = True
            _hard_close(self.connection)
            return
        self._write(outcome)

    def _write(self, reply: _Reply) -> None:
        self.answer(reply.status, reply.body, reply.content_type, reply.headers)


# --------------------------------------------------------------------------------------------
# The fake


class FakeSalesforce:
    """An in-memory Salesforce org behind a real TLS server on 127.0.0.1 (see the module doc)."""

    def __init__(
        self,
        *,
        username: str = "integration@partnero-sync.test",
        password: str = "correct-horse",
        security_token: str = "TOKEN123",
        consumer_key: str = "3MVG9fake.consumer.key",
        consumer_secret: str = "fake-consumer-secret",
        jwt_public_key: Any = None,
        jwt_audiences: set[str] | None = None,
        objects: dict[str, dict] | None = None,
        relationships: dict | None = None,
        seed: int = 0,
        api_max: int = 15000,
        query_batch_size: int = 2000,
        max_connections: int = 64,
        idle_timeout: float = 15.0,
        max_body: int = 20 * 1024 * 1024,
        max_calls: int = 100_000,
        fresh: bool = False,
    ):
        self.username = username
        self.password = password
        self.security_token = security_token
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.jwt_audiences = jwt_audiences
        self.api_max = api_max
        self.query_batch_size = query_batch_size
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        #: ``{(object, relationship): target}`` where target is ``"Contact"``,
        #: ``("Contact", "Ext_Id__c")`` or ``("Contact", "Ext_Id__c", "LookupField__c")``.
        self.relationships: dict = dict(relationships or {})

        self._lock = threading.RLock()          # data, tokens, switches, log
        self._life = threading.RLock()          # start/stop/outage transitions
        self._conn_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._rng = random.Random(seed)
        self._objects: dict[str, ObjectSpec] = {}
        self._store: dict[str, dict[str, dict]] = {}
        self._canon: dict[str, dict[str, str]] = {}
        self._indexes: dict[str, dict[str, dict[str, list[str]]]] = {}
        self._tokens: set[str] = set()
        self._calls: deque[Call] = deque(maxlen=max_calls)  # the newest calls
        self._counts: Counter[tuple[str, int]] = Counter()    # every call, by (kind, status)
        self._rejections: list[Rejection] = []
        self._denied: set[str] = set()
        self._cursors: OrderedDict[str, tuple[str, list[dict], int]] = OrderedDict()
        self._api_used = 0
        self._id_counter = 0
        self._latency = 0.0
        self._fail_rate = 0.0
        self._fail_with: Any = "SERVER_UNAVAILABLE"
        self._outage: str | None = None
        self.org_id = _with_checksum("00D" + "Hs0" + _base62(1, 9))
        self.user_id = _with_checksum("005" + "Hs0" + _base62(1, 9))
        self._jwt_public = jwt_public_key
        self._jwt_private_pem: str | None = None

        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._conns: set = set()
        self._threads: set[threading.Thread] = set()
        self._thread_counter = 0  # connections accepted
        self._started = False
        self.port = 0
        self.ca_bundle = ""

        # ``fresh``: an org as it comes, the standard objects with only their standard fields (a
        # write naming another is refused); else, as before, they take any field.
        for name, prefix, required in (("Account", "001", ("Name",)), ("Contact", "003", ("LastName",)),
                                       ("Lead", "00Q", ("LastName", "Company")),
                                       ("Opportunity", "006", ("Name", "StageName", "CloseDate"))):
            standard = [f["name"] for f in (*_system_fields(), *_STANDARD_DESCRIBED[name])]
            self.define_object(name, prefix=prefix, required=required, fields=standard if fresh else None)
        for name, options in (objects or {}).items():
            self.define_object(name, **options)
        #: The Metadata API (tests/fakes/salesforce_metadata.py).
        self.metadata = MetadataApi(self)
        #: Bulk API 2.0 ingest (tests/fakes/salesforce_bulk.py).
        self.bulk = BulkIngest(self)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "FakeSalesforce":
        with self._life:
            if self._started:
                return self
            context = tls.server_context()
            self.ca_bundle = tls.ca_bundle()
            self._stop_event.clear()
            self._server = _Server(self, context)
            self.port = self._server.server_address[1]
            self._started = True
            if self._outage == "refuse":
                self._server.socket.close()
            else:
                self._accept_in_background()
            return self

    def stop(self) -> None:
        with self._life:
            if not self._started:
                return
            self._started = False
            self._stop_event.set()
            self.bulk.stop()
            self._halt_serving()
            self._server.server_close()
            self._cut_connections()
            for thread in list(self._threads):
                thread.join(timeout=5)

    def __enter__(self) -> "FakeSalesforce":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _accept_in_background(self) -> None:
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-salesforce-accept", daemon=True)
        self._serve_thread.start()

    def _halt_serving(self) -> None:
        if self._serve_thread is not None:
            self._server.shutdown()
            self._serve_thread.join()
            self._serve_thread = None

    def _reopen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(self._server.request_queue_size)
        self._server.socket = sock
        self._accept_in_background()

    def _spawn(self, conn, address) -> None:
        with self._conn_lock:
            if not self._started or len(self._conns) >= self.max_connections:
                _hard_close(conn)
                return
            self._thread_counter += 1
            thread = threading.Thread(target=self._connection, args=(conn, address),
                                      name=f"fake-salesforce-conn-{self._thread_counter}",
                                      daemon=True)
            self._conns.add(conn)
            self._threads.add(thread)
        thread.start()

    def _connection(self, conn, address) -> None:
        try:
            _Handler(conn, address, self._server)
        except Exception:  # noqa: BLE001 - a client that goes away ends its connection, nothing else
            pass
        finally:
            try:
                self._server.shutdown_request(conn)
            except Exception:  # noqa: BLE001
                pass
            with self._conn_lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _cut_connections(self) -> None:
        """Wake every connection thread: its socket reads end at once."""
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def connections_accepted(self) -> int:
        """TLS connections accepted so far (keep-alive clients reuse theirs)."""
        with self._conn_lock:
            return self._thread_counter

    # ---------------------------------------------------------------- addresses and sessions

    @property
    def instance_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def login_domain(self) -> str:
        """simple-salesforce ``domain=`` that points its login URLs at the fake."""
        return f"127.0.0.1:{self.port}/login"

    def login_session(self):
        """A requests.Session sending login.salesforce.com / test.salesforce.com to the fake.

        It verifies TLS against ``ca_bundle`` itself (``trust_env`` is off so that a
        ``REQUESTS_CA_BUNDLE`` pointing elsewhere cannot override it).
        """
        import requests
        from requests.adapters import HTTPAdapter

        base = self.instance_url

        class _ToFake(HTTPAdapter):
            def send(self, request, *args, **kwargs):
                parts = urlsplit(request.url)
                request.url = base + parts.path + (f"?{parts.query}" if parts.query else "")
                return super().send(request, *args, **kwargs)

        session = requests.Session()
        session.trust_env = False
        session.verify = self.ca_bundle
        for host in ("https://login.salesforce.com", "https://test.salesforce.com"):
            session.mount(host, _ToFake())
        return session

    def issue_session(self) -> str:
        """A valid access token, as if a login had happened elsewhere."""
        with self._lock:
            token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(48)}"
            self._tokens.add(token)
            return token

    def expire_sessions(self) -> int:
        """Invalidate every token issued so far; returns how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.discard(token)

    @property
    def jwt_private_key(self) -> str:
        """PEM of an RSA key whose public half the fake trusts (made on first use)."""
        with self._lock:
            if self._jwt_private_pem is None:
                if self._jwt_public is not None:
                    raise RuntimeError("jwt_public_key was configured: sign with its private key")
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                self._jwt_private_pem = key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()).decode()
                self._jwt_public = key.public_key()
            return self._jwt_private_pem

    # ---------------------------------------------------------------- switches

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = max(0.0, float(seconds))

    @property
    def fail_rate(self) -> float:
        with self._lock:
            return self._fail_rate

    @fail_rate.setter
    def fail_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fail_rate is a probability between 0 and 1")
        with self._lock:
            self._fail_rate = float(rate)

    @property
    def fail_with(self) -> Any:
        with self._lock:
            return self._fail_with

    @fail_with.setter
    def fail_with(self, mode: Any) -> None:
        if isinstance(mode, int):
            mode = str(mode)
        if not (mode in _FAILURE_MODES or (isinstance(mode, tuple) and len(mode) == 3)):
            raise ValueError(f"fail_with is one of {sorted(_FAILURE_MODES)} or (status, code, message)")
        with self._lock:
            self._fail_with = mode

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng.seed(seed)

    @property
    def outage(self) -> str | None:
        with self._lock:
            return self._outage

    @outage.setter
    def outage(self, mode: str | int | None) -> None:
        mode = None if mode is None else str(mode)
        if mode not in _OUTAGES:
            raise ValueError(f"outage is one of {_OUTAGES}")
        with self._life:
            with self._lock:
                before, self._outage = self._outage, mode
            if not self._started or before == mode:
                return
            if mode == "refuse":
                self._halt_serving()
                self._server.socket.close()
                self._cut_connections()
            elif before == "refuse":
                self._reopen()

    @property
    def api_remaining(self) -> int:
        with self._lock:
            return max(0, self.api_max - self._api_used)

    @api_remaining.setter
    def api_remaining(self, remaining: int) -> None:
        with self._lock:
            self._api_used = self.api_max - int(remaining)

    def reject(self, predicate: Callable[[dict], bool], code: str, message: str, *,
               fields: tuple[str, ...] | list[str] = (), sobject: str | None = None,
               times: int | None = None) -> Rejection:
        """Make matching records fail with ``code`` (e.g. FIELD_CUSTOM_VALIDATION_EXCEPTION)."""
        rule = Rejection(predicate, code, message, tuple(fields), sobject, times)
        with self._lock:
            self._rejections.append(rule)
        return rule

    def deny(self, sobject: str) -> None:
        """The integration user loses access to ``sobject``: every call on it answers 403
        INSUFFICIENT_ACCESS for the whole request. ``allow(sobject)`` gives it back."""
        with self._lock:
            self._denied.add(sobject.lower())

    def allow(self, sobject: str) -> None:
        with self._lock:
            self._denied.discard(sobject.lower())

    def unreject(self, rule: Rejection | None = None) -> None:
        """Remove one rule, or all of them."""
        with self._lock:
            if rule is None:
                self._rejections.clear()
            elif rule in self._rejections:
                self._rejections.remove(rule)

    # ---------------------------------------------------------------- schema

    def define_object(self, name: str, *, prefix: str | None = None, required=(), fields=None,
                      external_ids=None, case_sensitive_ids: bool = False,
                      types: dict[str, str] | None = None) -> ObjectSpec:
        """Declare an sObject type (custom ones get a prefix a01, a02, ...)."""
        with self._lock:
            if prefix is None:
                used = {spec.prefix for spec in self._objects.values()}
                prefix = next(f"a{_BASE62[i // 62]}{_BASE62[i % 62]}"
                              for i in range(1, 62 * 62) if f"a{_BASE62[i // 62]}{_BASE62[i % 62]}" not in used)
            spec = ObjectSpec(name, prefix, tuple(required),
                              None if fields is None else frozenset(fields) | set(_STANDARD_FIELDS),
                              None if external_ids is None else frozenset(external_ids),
                              case_sensitive_ids, dict(types or {}))
            for described in (*_system_fields(), *_STANDARD_DESCRIBED.get(name, [_CUSTOM_NAME])):
                spec.described[described["name"].lower()] = described
            if spec.fields is not None and name.endswith("__c"):
                spec.fields = spec.fields | {"Name"}
            self._objects[name] = spec
            self._store.setdefault(name, {})
            self._indexes.setdefault(name, {})
            canon = self._canon.setdefault(name, {})
            for known in (*_STANDARD_FIELDS, *spec.required, *(spec.fields or ()),
                          *(spec.external_ids or ()), *spec.types):
                canon.setdefault(known.lower(), known)
            return spec

    def add_field(self, sobject: str, name: str, kind: str = "string", *, length: int | None = None,
                  precision: int = 0, scale: int = 0, external_id: bool = False, unique: bool = False,
                  required: bool = False, reference_to: str | None = None,
                  writable: bool = True) -> dict:
        """Create a field as an admin does in Setup: ``kind`` is describe's type; a ``reference``
        looks up ``reference_to`` through the relationship ``Name__r``; ``writable=False`` leaves
        it readable only (a formula, or field-level security granting read). Writes then take it
        (an object that took any field still does), read as its type."""
        with self._lock:
            spec = self._require_spec(sobject)
            relationship = name[:-3] + "__r" if reference_to and name.endswith("__c") else None
            described = _described(name, kind, length=length, precision=precision, scale=scale,
                                   external_id=external_id, unique=unique, nillable=not required,
                                   createable=writable, reference_to=(reference_to,) if reference_to else (),
                                   relationship_name=relationship)
            spec.described[name.lower()] = described
            spec.hidden.discard(name.lower())
            self._canon[spec.name].setdefault(name.lower(), name)
            if spec.fields is not None:
                spec.fields = spec.fields | {name}
            if external_id and spec.external_ids is not None:
                spec.external_ids = spec.external_ids | {name}
            if kind in _READ_AS:
                spec.types[name] = _READ_AS[kind]
            if required:
                spec.required = (*spec.required, name)
            if relationship:
                self.relationships[(spec.name, relationship)] = (reference_to, None, name)
            return copy.deepcopy(described)

    def has_object(self, name: str) -> bool:
        with self._lock:
            return self._spec(name) is not None

    def hide_field(self, sobject: str, name: str) -> None:
        """Field-level security: the integration user cannot see ``name``. Describe leaves it out
        and a write naming it is refused as one naming a field the object lacks (Salesforce does
        not tell the two apart: "No such column ... on sobject of type ...")."""
        with self._lock:
            self._require_spec(sobject).hidden.add(name.lower())

    def _hidden(self, spec: ObjectSpec, name: str) -> bool:
        return name.lower() in spec.hidden

    def _spec(self, name: str) -> ObjectSpec | None:
        spec = self._objects.get(name)
        if spec is None:
            spec = next((s for s in self._objects.values() if s.name.lower() == name.lower()), None)
        return spec

    def _field(self, sobject: str, name: str, register: bool = True) -> str:
        canon = self._canon[sobject]
        found = canon.get(name.lower())
        if found is None:
            found = name
            if register:
                canon[name.lower()] = name
        return found

    # ---------------------------------------------------------------- inspection and seeding

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, kind: str | None = None, *, status: int | None = None) -> int:
        """How many requests of that kind (and status) were answered, ever or since clear_calls()."""
        with self._lock:
            return sum(n for (k, s), n in self._counts.items()
                       if (kind is None or k == kind) and (status is None or s == status))

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._counts.clear()

    def records(self, sobject: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._store[self._require_spec(sobject).name].values()))

    def get(self, sobject: str, field_name: str, value: Any) -> dict | None:
        with self._lock:
            spec = self._require_spec(sobject)
            ids = self._lookup(spec, field_name, value)
            return copy.deepcopy(self._store[spec.name][ids[0]]) if ids else None

    def get_by_id(self, record_id: str) -> dict | None:
        with self._lock:
            found = self._by_id(record_id)
            return copy.deepcopy(found[1]) if found else None

    def add(self, sobject: str, fields: dict) -> str:
        """Store a record directly (validated, but no rejections or failures); returns its id."""
        with self._lock:
            spec = self._require_spec(sobject)
            try:
                return self._write(spec, fields, undo=[], hooks=False)["id"]
            except _RecordError as exc:
                raise ValueError(str(exc)) from None

    def reset(self) -> None:
        """Forget records, calls, tokens, rules and switches (objects and relationships stay)."""
        with self._lock:
            for name in self._store:
                self._store[name].clear()
                self._indexes[name].clear()
            self._calls.clear()
            self._counts.clear()
            self._tokens.clear()
            self._rejections.clear()
            self._cursors.clear()
            self._api_used = 0
            self._latency, self._fail_rate = 0.0, 0.0
        self.bulk.reset()
        self.outage = None

    def _require_spec(self, sobject: str) -> ObjectSpec:
        spec = self._spec(sobject)
        if spec is None:
            raise KeyError(f"FakeSalesforce knows no object {sobject!r}: define_object() it")
        return spec

    # ---------------------------------------------------------------- storage

    def _key(self, spec: ObjectSpec, value: Any) -> str | None:
        if value is None or value == "":
            return None
        text = str(value)
        return text if spec.case_sensitive_ids else text.casefold()

    def _index(self, spec: ObjectSpec, field_name: str) -> dict[str, list[str]]:
        indexes = self._indexes[spec.name]
        index = indexes.get(field_name)
        if index is None:
            index = {}
            for rid, record in self._store[spec.name].items():
                key = self._key(spec, record.get(field_name))
                if key is not None:
                    index.setdefault(key, []).append(rid)
            indexes[field_name] = index
        return index

    def _lookup(self, spec: ObjectSpec, field_name: str, value: Any) -> list[str]:
        field_name = self._field(spec.name, field_name, register=False)
        if field_name == "Id":
            return [value] if value in self._store[spec.name] else []
        key = self._key(spec, value)
        return list(self._index(spec, field_name).get(key, [])) if key is not None else []

    def _put(self, spec: ObjectSpec, rid: str, record: dict | None, undo: list) -> None:
        """Store (or with ``None`` remove) a record, keeping the indexes and the undo log."""
        store = self._store[spec.name]
        before = store.get(rid)
        undo.append((spec, rid, copy.deepcopy(before)))
        for field_name, index in self._indexes[spec.name].items():
            old_key = self._key(spec, before.get(field_name)) if before else None
            new_key = self._key(spec, record.get(field_name)) if record else None
            if old_key == new_key:
                continue
            if old_key is not None and rid in index.get(old_key, ()):
                index[old_key].remove(rid)
                if not index[old_key]:
                    del index[old_key]
            if new_key is not None:
                index.setdefault(new_key, []).append(rid)
        if record is None:
            store.pop(rid, None)
        else:
            store[rid] = record

    def _rollback(self, undo: list) -> None:
        for spec, rid, before in reversed(undo):
            self._put(spec, rid, before, [])
        undo.clear()

    def _new_id(self, spec: ObjectSpec) -> str:
        self._id_counter += 1
        return _with_checksum(spec.prefix + "Hs0" + _base62(self._id_counter, 9))

    def _by_id(self, rid: Any) -> tuple[ObjectSpec, dict] | None:
        if not isinstance(rid, str) or len(rid) not in (15, 18):
            return None
        for spec in self._objects.values():
            if spec.prefix == rid[:3]:
                for candidate in (rid, _with_checksum(rid[:15])):
                    if candidate in self._store[spec.name]:
                        return spec, self._store[spec.name][candidate]
        return None

    # ---------------------------------------------------------------- relationships

    def _relationship(self, sobject: str, rel: str) -> tuple[str | None, str] | None:
        """(target object or None to infer, lookup field) for ``rel`` on ``sobject``."""
        configured = self.relationships.get((sobject, rel))
        if configured is None:
            configured = next((v for (obj, name), v in self.relationships.items()
                               if obj.lower() == sobject.lower() and name.lower() == rel.lower()), None)
        if configured is not None:
            if isinstance(configured, str):
                configured = (configured,)
            target = configured[0]
            lookup = configured[2] if len(configured) > 2 else (
                rel[:-3] + "__c" if rel.endswith("__r") else rel + "Id")
            return target, lookup
        if rel.endswith("__r"):
            return None, rel[:-3] + "__c"
        if rel in _STANDARD_RELATIONSHIPS:
            return ("Account" if rel == "Parent" else rel), rel + "Id"
        return None

    def _infer_target(self, rel: str, ext_field: str) -> str | None:
        named = self._spec(rel[:-3] + "__c") if rel.endswith("__r") else None
        if named is not None:
            return named.name
        candidates = [name for name, canon in self._canon.items()
                      if ext_field.lower() in canon and ext_field.lower() not in
                      {f.lower() for f in _STANDARD_FIELDS}]
        return candidates[0] if len(candidates) == 1 else None

    def _resolve(self, spec: ObjectSpec, rel: str, nested: Any) -> tuple[str, str]:
        """Resolve ``"Rel__r": {"Ext__c": value}`` to (lookup field, record id)."""
        found = self._relationship(spec.name, rel)
        if found is None:
            raise _RecordError("INVALID_FIELD", f"No such column '{rel}' on sobject of type {spec.name}",
                               [rel])
        target, lookup = found
        if not isinstance(nested, dict):
            raise _RecordError("INVALID_FIELD",
                               f"Relationship {rel} takes an object naming one external ID field", [rel])
        keys = [k for k in nested if k != "attributes"]
        if len(keys) != 1:
            raise _RecordError("INVALID_FIELD",
                               f"Relationship {rel} must name exactly one external ID field", [rel])
        ext_field, value = keys[0], nested[keys[0]]
        attributes = nested.get("attributes")
        if isinstance(attributes, dict) and attributes.get("type"):
            target = attributes["type"]
        if target is None:
            target = self._infer_target(rel, ext_field)
        target_spec = self._spec(target) if target else None
        if target_spec is None:
            raise _RecordError("INVALID_FIELD",
                               f"FakeSalesforce cannot tell which object {spec.name}.{rel} points to: "
                               f"set fake.relationships[({spec.name!r}, {rel!r})]", [rel])
        ids = self._lookup(target_spec, ext_field, value)
        if not ids:
            raise _RecordError("INVALID_FIELD", f"Foreign key external ID: {value} not found for field "
                                                f"{ext_field} in entity {target_spec.name}")
        if len(ids) > 1:
            raise _RecordError("DUPLICATE_EXTERNAL_ID",
                               f"Foreign key external ID: {value} matched more than one record "
                               f"for field {ext_field} in entity {target_spec.name}")
        return self._field(spec.name, lookup), ids[0]

    # ---------------------------------------------------------------- writes

    def _write(self, spec: ObjectSpec, data: dict, *, undo: list, match_field: str | None = None,
               match_value: Any = None, record_id: str | None = None, hooks: bool = True) -> dict:
        """Create, update by id, or upsert by external id; returns an UpsertResult-like dict."""
        incoming = {k: v for k, v in data.items() if k != "attributes"}
        changes: dict[str, Any] = {}
        for key, value in incoming.items():
            if isinstance(value, dict):
                lookup, target_id = self._resolve(spec, key, value)
                changes[lookup] = target_id
                continue
            name = self._field(spec.name, key, register=spec.fields is None)
            if (spec.fields is not None and name not in spec.fields) or self._hidden(spec, name):
                raise _RecordError("INVALID_FIELD",
                                   f"No such column '{key}' on sobject of type {spec.name}", [key])
            if (name in _STANDARD_FIELDS or not spec.described.get(name.lower(), {}).get("createable", True)
                    or (hooks and self.metadata.access(spec.name, name) == "read")):
                raise _RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                   f"Unable to create/update fields: {name}. Please check the "
                                   f"security settings of this field and verify that it is "
                                   f"read/write for your profile or permission set.", [name])
            changes[name] = value
        existing: str | None = None
        if record_id is not None:
            existing = record_id
        elif match_field is not None:
            match_field = self._field(spec.name, match_field)
            if match_value is None or match_value == "":
                raise _RecordError("MISSING_ARGUMENT", f"{match_field} not specified", [match_field])
            changes[match_field] = match_value
            ids = self._lookup(spec, match_field, match_value)
            if len(ids) > 1:
                raise _RecordError("DUPLICATE_EXTERNAL_ID",
                                   f"Duplicate external id specified: {match_value}", [match_field])
            existing = ids[0] if ids else None
        before = self._store[spec.name].get(existing) if existing else None
        record = dict(before) if before else {}
        record.update(changes)
        missing = [name for name in spec.required if record.get(name) in (None, "")]
        if missing:
            raise _RecordError("REQUIRED_FIELD_MISSING",
                               f"Required fields are missing: [{', '.join(missing)}]", missing)
        if hooks:
            view = {"attributes": {"type": spec.name}, **incoming}
            if match_field is not None:
                view[match_field] = match_value
            self._apply_rejections(spec, view)
            if self._roll_record_failure():
                raise _RecordError("UNABLE_TO_LOCK_ROW", _FAILURE_MODES["UNABLE_TO_LOCK_ROW"][2]
                                   .format(id=existing or self._peek_id(spec)))
        now = _now_text()
        created = before is None
        rid = existing or self._new_id(spec)
        if created:
            record = {"Id": rid, "CreatedDate": now, **{k: v for k, v in record.items() if k != "Id"}}
        record["LastModifiedDate"] = record["SystemModstamp"] = now
        self._put(spec, rid, record, undo)
        return {"id": rid, "success": True, "errors": [], "created": created}

    def _peek_id(self, spec: ObjectSpec) -> str:
        return _with_checksum(spec.prefix + "Hs0" + _base62(self._id_counter + 1, 9))

    def _apply_rejections(self, spec: ObjectSpec, view: dict) -> None:
        for rule in list(self._rejections):
            if rule.sobject is not None and rule.sobject.lower() != spec.name.lower():
                continue
            try:
                hit = bool(rule.predicate(view))
            except Exception:  # noqa: BLE001 - a predicate that trips on a record means no match
                hit = False
            if hit:
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rejections.remove(rule)
                raise _RecordError(rule.code, rule.message, rule.fields)

    def _roll_record_failure(self) -> bool:
        return (self._fail_with == "UNABLE_TO_LOCK_ROW" and self._fail_rate > 0
                and self._rng.random() < self._fail_rate)

    def _roll_call_failure(self) -> tuple[int, str, str] | None:
        mode = self._fail_with
        if self._fail_rate <= 0 or mode == "UNABLE_TO_LOCK_ROW":
            return None
        if self._rng.random() >= self._fail_rate:
            return None
        return mode if isinstance(mode, tuple) else _FAILURE_MODES[mode]

    # ---------------------------------------------------------------- request handling

    def _serve(self, method: str, raw_path: str, headers, body: bytes):
        latency = self.latency
        if latency > 0:
            self._stop_event.wait(latency)
        parts = urlsplit(raw_path)
        path = _LOGIN_HOST_SEGMENT.sub("", parts.path, count=1)
        outage = self.outage
        if outage == "drop":
            self._log(method, path, 0, "outage", 0, "drop")
            return _DROP
        if outage is not None:
            reply = _reply(503, [{"errorCode": "SERVER_UNAVAILABLE",
                                  "message": "Server temporarily unavailable"}], kind="outage")
        else:
            try:
                reply = self._route(method, path, parse_qs(parts.query, keep_blank_values=True),
                                    headers, body)
            except _HttpError as exc:
                reply = _reply(exc.status, exc.payload, kind=getattr(exc, "kind", "rest"),
                               detail=exc.detail)
            except Exception as exc:  # noqa: BLE001 - a bug in the fake must still answer
                reply = _reply(500, [{"errorCode": "UNKNOWN_EXCEPTION",
                                      "message": f"FakeSalesforce failed: {exc!r}"}],
                               detail="UNKNOWN_EXCEPTION")
        self._log(method, path, reply.records, reply.kind, reply.status, reply.detail)
        return reply

    def _log(self, method: str, path: str, records: int, kind: str, status: int, detail: str) -> None:
        with self._lock:
            self._calls.append(Call(method, path, records, kind, status, detail))
            self._counts[(kind, status)] += 1

    def _route(self, method: str, path: str, query: dict, headers, body: bytes) -> _Reply:
        if METADATA_PATH.match(path):
            answer = self.metadata.serve(body)
            return _Reply(answer.status, answer.body, XML_TYPE, kind="metadata", detail=answer.detail)
        soap = _SOAP_PATH.match(path)
        if soap:
            return self._soap_login(method, soap.group(1), body)
        if path.rstrip("/") == "/services/oauth2/token":
            return self._oauth_token(method, headers, body)
        if path.rstrip("/") == "/services/oauth2/userinfo":
            return self._userinfo(headers)
        if _DATA_ROOT.match(path):
            return _reply(200, [{"label": "Fake", "url": "/services/data/v59.0", "version": "59.0"}])
        data = _DATA_PATH.match(path)
        if data:
            return self._rest(method, data.group(1), data.group(2) or "", query, headers, body)
        raise _HttpError(404, _NOT_FOUND)

    # ---------------------------------------------------------------- logins

    def _soap_login(self, method: str, version: str, body: bytes) -> _Reply:
        def fault(code: str, message: str) -> _Reply:
            xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
                   'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                   'xmlns:sf="urn:fault.partner.soap.sforce.com" '
                   'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
                   f'<soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: '
                   f'{xml_escape(message)}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault">'
                   f'<sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>'
                   f'{xml_escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>'
                   '</soapenv:Fault></soapenv:Body></soapenv:Envelope>')
            return _Reply(500, xml.encode(), XML_TYPE, kind="login", detail=code)

        if method != "POST":
            return fault("INVALID_OPERATION", "Use POST")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return fault("INVALID_REQUEST", "The request body is not XML")
        username = root.findtext(f".//{{{PARTNER_NS}}}username")
        password = root.findtext(f".//{{{PARTNER_NS}}}password")
        if username is None or password is None:
            return fault("INVALID_REQUEST", "login needs a username and a password")
        if not self._password_ok(username, password):
            return fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        token = self.issue_session()
        server_url = f"{self.instance_url}/services/Soap/u/{version}/{self.org_id[:15]}"
        xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
               'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
               'xmlns="urn:partner.soap.sforce.com" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
               '<loginResponse><result>'
               f'<metadataServerUrl>{self.instance_url}/services/Soap/m/{version}/{self.org_id[:15]}'
               '</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>false</sandbox>'
               f'<serverUrl>{server_url}</serverUrl><sessionId>{xml_escape(token)}</sessionId>'
               f'<userId>{self.user_id}</userId><userInfo><organizationId>{self.org_id}</organizationId>'
               f'<userId>{self.user_id}</userId><userName>{xml_escape(self.username)}</userName>'
               '</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>')
        return _Reply(200, xml.encode(), XML_TYPE, kind="login", detail="soap")

    def _password_ok(self, username: str, password: str) -> bool:
        expected = self.password + (self.security_token or "")
        return (hmac.compare_digest(username, self.username)
                and hmac.compare_digest(password.encode(), expected.encode()))

    def _client_ok(self, client_id: str | None, client_secret: str | None) -> bool:
        return (client_id is not None and client_secret is not None
                and hmac.compare_digest(client_id.encode(), self.consumer_key.encode())
                and hmac.compare_digest(client_secret.encode(), self.consumer_secret.encode()))

    def _oauth_token(self, method: str, headers, body: bytes) -> _Reply:
        def error(status: int, code: str, description: str, grant: str) -> _Reply:
            return _reply(status, {"error": code, "error_description": description},
                          kind="login", detail=f"{grant}:{code}")

        if method != "POST":
            return error(405, "invalid_request", "must use HTTP POST", "?")
        try:
            form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            form = {}
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            problem = self._jwt_problem(form.get("assertion", ""))
            if problem:
                return error(400, *problem, "jwt-bearer")
        elif grant == "client_credentials":
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            auth = headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    client_id = client_secret = None
            if not self._client_ok(client_id, client_secret):
                return error(400, "invalid_client", "invalid client credentials", grant)
        elif grant == "password":
            if not self._client_ok(form.get("client_id"), form.get("client_secret")):
                return error(400, "invalid_client_id", "client identifier invalid", grant)
            if not self._password_ok(form.get("username", ""), form.get("password", "")):
                return error(400, "invalid_grant", "authentication failure", grant)
        else:
            return error(400, "unsupported_grant_type", "grant type not supported", grant or "?")
        token = self.issue_session()
        issued_at = str(int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000))
        identity = f"{self.instance_url}/id/{self.org_id}/{self.user_id}"
        signature = base64.b64encode(hmac.new(self.consumer_secret.encode(),
                                              (identity + issued_at).encode(), hashlib.sha256).digest())
        return _reply(200, {"access_token": token, "instance_url": self.instance_url, "id": identity,
                            "token_type": "Bearer", "issued_at": issued_at,
                            "signature": signature.decode(), "scope": "api"},
                      kind="login", detail=grant.rsplit(":", 1)[-1])

    def _userinfo(self, headers) -> _Reply:
        """The OpenID Connect UserInfo endpoint (Salesforce Help, "Query for User Information":
        ``sub`` is the identity URL, ``user_id``, ``organization_id``, ``preferred_username``)."""
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        with self._lock:
            known = scheme.lower() in ("bearer", "oauth") and token.strip() in self._tokens
        if not known:
            return _reply(401, _INVALID_SESSION, kind="login", detail="userinfo:INVALID_SESSION_ID")
        return _reply(200, {"sub": f"{self.instance_url}/id/{self.org_id}/{self.user_id}",
                            "user_id": self.user_id, "organization_id": self.org_id,
                            "preferred_username": self.username}, kind="login", detail="userinfo")

    def _jwt_problem(self, assertion: str) -> tuple[str, str] | None:
        """None when the assertion is good, else (error, error_description)."""
        invalid = ("invalid_grant", "invalid assertion")
        try:
            head64, claims64, sig64 = assertion.split(".")
            header = json.loads(_b64url_decode(head64))
            claims = json.loads(_b64url_decode(claims64))
            signature = _b64url_decode(sig64)
        except (ValueError, binascii.Error):
            return invalid
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            return invalid
        key = self._jwt_key()
        if key is None:
            return invalid
        try:
            key.verify(signature, f"{head64}.{claims64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return invalid
        if claims.get("iss") != self.consumer_key:
            return ("invalid_client_id", "client identifier invalid")
        if claims.get("sub") != self.username:
            return invalid
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(aud, str) and self._audience_ok(aud) for aud in audiences):
            return ("invalid_grant", "audience is invalid")
        try:
            expires = float(claims["exp"])  # simple-salesforce sends it as a numeric string
        except (KeyError, TypeError, ValueError):
            return invalid
        if expires <= dt.datetime.now(dt.timezone.utc).timestamp():
            return ("invalid_grant", "expired authorization code")
        return None

    def _audience_ok(self, aud: str) -> bool:
        if self.jwt_audiences is not None:
            return aud in self.jwt_audiences
        return (aud in ("https://login.salesforce.com", "https://test.salesforce.com")
                or aud == self.instance_url or aud.startswith(self.instance_url + "/"))

    def _jwt_key(self):
        key = self._jwt_public
        if key is None:
            return None
        if isinstance(key, str):
            key = key.encode()
        if isinstance(key, bytes):
            if b"BEGIN CERTIFICATE" in key:
                key = x509.load_pem_x509_certificate(key).public_key()
            else:
                key = serialization.load_pem_public_key(key)
            self._jwt_public = key
        return key if isinstance(key, rsa.RSAPublicKey) else None

    # ---------------------------------------------------------------- REST

    def _rest(self, method: str, version: str, rest: str, query: dict, headers, body: bytes) -> _Reply:
        segments = [unquote(s) for s in rest.split("/")]
        while segments and segments[-1] == "":
            segments.pop()
        kind, handler, allowed = self._rest_route(method, segments, body)
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        with self._lock:
            if scheme.lower() not in ("bearer", "oauth") or token.strip() not in self._tokens:
                error = _HttpError(401, _INVALID_SESSION)
                error.kind = kind
                raise error
            self._api_used += 1
            usage = {"Sforce-Limit-Info": f"api-usage={min(self._api_used, self.api_max)}/{self.api_max}"}
            if self._api_used > self.api_max:
                reply = _reply(403, [{"message": "TotalRequests Limit exceeded.",
                                      "errorCode": "REQUEST_LIMIT_EXCEEDED"}], kind=kind,
                               detail="REQUEST_LIMIT_EXCEEDED")
                reply.headers.update(usage)
                return reply
            failure = self._roll_call_failure()
        if failure is not None:
            status, code, message = failure
            reply = _reply(status, [{"message": message, "errorCode": code}], kind=kind, detail=code)
        elif handler is None:
            if allowed:
                reply = _reply(405, [{"errorCode": "METHOD_NOT_ALLOWED",
                                      "message": f"HTTP Method '{method}' not allowed. Allowed are "
                                                 f"{','.join(allowed)}"}], kind=kind)
            else:
                reply = _reply(404, _NOT_FOUND, kind=kind, detail="NOT_FOUND")
        else:
            try:
                # Bulk ingest keeps its own lock and takes this one a slice of rows at a time.
                with contextlib.nullcontext() if kind.startswith("bulk_") else self._lock:
                    reply = handler(version, segments, query, body)
            except _HttpError as exc:
                reply = _reply(exc.status, exc.payload, detail=exc.detail)
            reply.kind = kind
        reply.headers.update(usage)
        return reply

    def _rest_route(self, method: str, s: list[str], body: bytes = b""):
        """(kind, handler or None, allowed methods) for a path under /services/data/vXX.X/."""
        n = len(s)
        table: dict[str, tuple[str, Callable]] = {}
        if n >= 2 and s[0] == "jobs" and s[1] == "ingest":
            kind = self.bulk.kind(method, s, body)
            table = {m: (kind, self._bulk_call(h)) for m, h in self.bulk.route(method, s).items()}
        elif n == 0:
            table = {"GET": ("rest", self._h_resources)}
        elif s[0] == "limits" and n == 1:
            table = {"GET": ("limits", self._h_limits)}
        elif s[0] in ("query", "queryAll") and n in (1, 2):
            table = {"GET": ("query", self._h_query)}
        elif s[0] == "sobjects":
            if n == 1:
                table = {"GET": ("describe", self._h_describe_global)}
            elif n == 2:
                table = {"POST": ("create", self._h_create), "GET": ("describe", self._h_describe)}
            elif n == 3 and s[2] == "describe":
                table = {"GET": ("describe", self._h_describe)}
            elif n == 3:
                table = {"GET": ("get", self._h_get), "PATCH": ("update", self._h_update),
                         "DELETE": ("delete", self._h_delete)}
            elif n == 4:
                table = {"GET": ("get", self._h_get), "PATCH": ("upsert", self._h_upsert),
                         "DELETE": ("delete", self._h_delete)}
        elif s[0] == "composite" and n == 4 and s[1] == "sobjects":
            table = {"PATCH": ("collections", self._h_collections)}
        if method in table:
            return table[method][0], table[method][1], list(table)
        kind = next(iter(table.values()))[0] if table else "rest"
        return kind, None, list(table)

    def _object_from_url(self, name: str) -> ObjectSpec:
        spec = self._spec(name)
        if spec is None:
            raise _HttpError(404, _NOT_FOUND, "NOT_FOUND")
        if spec.name.lower() in self._denied:
            raise _HttpError(403, [{"errorCode": "INSUFFICIENT_ACCESS", "message": "insufficient access "
                                    f"rights on object {spec.name}: the user's profile or permission sets "
                                    "do not grant it"}], "INSUFFICIENT_ACCESS")
        return spec

    def _ext_field_from_url(self, spec: ObjectSpec, name: str) -> str:
        canon = self._field(spec.name, name, register=False)
        if spec.external_ids is not None and canon not in spec.external_ids and canon != "Id":
            raise _HttpError(404, [{"errorCode": "NOT_FOUND", "message": "Provided external ID field "
                                    f"does not exist or is not accessible: {name}"}])
        if (spec.fields is not None and canon not in spec.fields) or self._hidden(spec, canon):
            raise _HttpError(404, [{"errorCode": "NOT_FOUND", "message": "Provided external ID field "
                                    f"does not exist or is not accessible: {name}"}])
        return canon

    @staticmethod
    def _json_body(body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HttpError(400, [{"message": f"Unexpected character in the JSON body: {exc}",
                                    "errorCode": "JSON_PARSER_ERROR"}]) from None

    def _check_deserializable(self, spec: ObjectSpec, record: dict, body: bytes) -> None:
        """What Salesforce refuses while reading the body, for the whole request: a field the
        object does not have (or the user cannot see), a relationship it does not have, a value
        that is not of its field's type."""
        for key, value in record.items():
            if key == "attributes":
                continue
            if isinstance(value, dict):
                found = self._relationship(spec.name, key)
                if found is None or self._hidden(spec, found[1]):
                    raise _HttpError(400, [{"message": f"No such column '{key}' on sobject of type "
                                                       f"{spec.name}", "errorCode": "INVALID_FIELD"}])
                continue
            name = self._field(spec.name, key, register=False)
            if ((spec.fields is not None and name not in spec.fields) or self._hidden(spec, name)
                    or self.metadata.access(spec.name, name) is None):
                raise _HttpError(400, [{"message": f"No such column '{key}' on sobject of type {spec.name}",
                                        "errorCode": "INVALID_FIELD"}])
            kind = spec.types.get(name)
            if kind is not None and value is not None and not _of_type(kind, value):
                token = "VALUE_STRING" if isinstance(value, str) else (
                    "VALUE_TRUE" if value is True else "VALUE_FALSE" if value is False else "VALUE_NUMBER_INT"
                    if isinstance(value, int) else "VALUE_NUMBER_FLOAT" if isinstance(value, float)
                    else "START_ARRAY" if isinstance(value, list) else "START_OBJECT")
                column = body.find(json.dumps(value).encode()) + 1
                raise _HttpError(400, [{"message": f"Cannot deserialize instance of {kind} from {token} value "
                                                   f"{value} or request may be missing a required field at "
                                                   f"[line:1, column:{column}]", "errorCode": "JSON_PARSER_ERROR"}])

    def _record_json(self, spec: ObjectSpec, record: dict, version: str,
                     only: list[str] | None = None) -> dict:
        out: dict[str, Any] = {"attributes": {"type": spec.name,
                                              "url": f"/services/data/v{version}/sobjects/{spec.name}/{record['Id']}"}}
        if only is None:
            out.update(record)
        else:
            for name in only:
                canon = self._field(spec.name, name, register=False)
                out[canon] = record.get(canon)
        return out

    def _h_resources(self, version, segments, query, body) -> _Reply:
        base = f"/services/data/v{version}"
        return _reply(200, {"sobjects": f"{base}/sobjects", "query": f"{base}/query",
                            "limits": f"{base}/limits", "composite": f"{base}/composite"})

    def _h_limits(self, version, segments, query, body) -> _Reply:
        remaining = max(0, self.api_max - self._api_used)
        return _reply(200, {
            "DailyApiRequests": {"Max": self.api_max, "Remaining": remaining},
            "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
            # DailyBulkApiBatches (Bulk API and Bulk API 2.0 ingest batches), DailyBulkV2QueryJobs
            # and DailyBulkV2QueryFileStorageMB: tests/fakes/salesforce_bulk.py.
            **self.bulk.limits(),
            "DataStorageMB": {"Max": 5, "Remaining": 5},
            "FileStorageMB": {"Max": 20, "Remaining": 20},
            "SingleEmail": {"Max": 15, "Remaining": 15},
        })

    # ---------------------------------------------------------------- hooks for Bulk API 2.0

    def _bulk_call(self, handler: Callable) -> Callable:
        """A bulk handler (tests/fakes/salesforce_bulk.py) as a REST handler: its answer or its
        refusal as this fake's reply."""
        def call(version, segments, query, body) -> _Reply:
            try:
                answer: BulkAnswer = handler(version, segments, query, body)
            except BulkError as exc:
                return _reply(exc.status, exc.payload(), detail=exc.code)
            return _Reply(answer.status, answer.body, answer.content_type, records=answer.records,
                          detail=answer.detail)
        return call

    def _body_limit(self, method: str, raw_path: str) -> int:
        """The largest request body read: ``max_body``, or the bulk upload limit for an upload."""
        if method == "PUT" and urlsplit(raw_path).path.rstrip("/").endswith("/batches"):
            return max(self.max_body, self.bulk.upload_read_limit())
        return self.max_body

    def _bulk_job_id(self, number: int) -> str:
        """An ingest job's id: key prefix 750, as Salesforce's (Bulk API 2.0 Developer Guide)."""
        return _with_checksum("750" + "Hs0" + _base62(number, 9))

    def _bulk_external_id(self, spec: ObjectSpec, name: str) -> str | None:
        """The external id field a bulk upsert names, canonical, or None if the object lacks it."""
        try:
            return self._ext_field_from_url(spec, name)
        except _HttpError:
            return None

    def _bulk_write(self, spec: ObjectSpec, data: dict, **how: Any) -> tuple[dict | None, tuple | None]:
        """One bulk CSV row through the record writing: (result, None) or (None, (code, message,
        fields)). The caller holds the lock."""
        try:
            return self._write(spec, data, undo=[], **how), None
        except _RecordError as exc:
            return None, (exc.code, exc.message, exc.fields)

    def _h_describe_global(self, version, segments, query, body) -> _Reply:
        return _reply(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
            {"name": spec.name, "keyPrefix": spec.prefix, "custom": spec.name.endswith("__c"),
             "urls": {"sobject": f"/services/data/v{version}/sobjects/{spec.name}"}}
            for spec in self._objects.values()]})

    def _h_describe(self, version, segments, query, body) -> _Reply:
        """The sObject Describe (GET .../sobjects/{name}/describe, REST API Developer Guide): the
        object's properties and its fields as this user sees them (hidden ones left out)."""
        spec = self._object_from_url(segments[1])
        fields = dict(spec.described)
        # Fields an object that takes any field has been written: a text, as a guess at least
        # shaped like Salesforce's.
        known = spec.fields if spec.fields is not None else self._canon[spec.name].values()
        for name in known:
            fields.setdefault(name.lower(), _described(name, "id" if name == "Id" else "string"))
        custom = spec.name.endswith("__c")
        return _reply(200, {
            "name": spec.name, "label": spec.name.removesuffix("__c").replace("_", " "), "keyPrefix": spec.prefix,
            "custom": custom, "createable": True, "updateable": True, "deletable": True, "queryable": True,
            "urls": {"sobject": f"/services/data/v{version}/sobjects/{spec.name}",
                     "describe": f"/services/data/v{version}/sobjects/{spec.name}/describe"},
            # Fields made through the Metadata API, as this user's permission sets let them be seen.
            "fields": self.metadata.describe(
                spec.name, [copy.deepcopy(f) for key, f in sorted(fields.items()) if key not in spec.hidden])})

    def _h_get(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[1])
        if len(segments) == 3:
            found = self._by_id(segments[2])
            ids = [found[1]["Id"]] if found and found[0] is spec else []
        else:
            ids = self._lookup(spec, self._ext_field_from_url(spec, segments[2]), segments[3])
        if not ids:
            raise _HttpError(404, _NOT_FOUND, "NOT_FOUND")
        if len(ids) > 1:
            return _reply(300, [f"/services/data/v{version}/sobjects/{spec.name}/{rid}" for rid in ids])
        only = query.get("fields", [None])[-1]
        record = self._record_json(spec, self._store[spec.name][ids[0]], version,
                                   only.split(",") if only else None)
        return _reply(200, record, records=1)

    def _h_delete(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[1])
        if len(segments) == 3:
            ids = [segments[2]] if segments[2] in self._store[spec.name] else []
        else:
            ids = self._lookup(spec, self._ext_field_from_url(spec, segments[2]), segments[3])
        if not ids:
            raise _HttpError(404, _NOT_FOUND, "NOT_FOUND")
        self._put(spec, ids[0], None, [])
        return _Reply(204, records=1)

    def _single_write(self, spec: ObjectSpec, body: bytes, **how: Any) -> dict:
        data = self._json_body(body)
        if not isinstance(data, dict):
            raise _HttpError(400, [{"message": "Cannot deserialize instance of SObject from an array "
                                               "or value", "errorCode": "JSON_PARSER_ERROR"}])
        self._check_deserializable(spec, data, body)
        try:
            return self._write(spec, data, undo=[], **how)
        except _RecordError as exc:
            raise _HttpError(400, [exc.for_rest()], exc.code) from None

    def _h_create(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[1])
        result = self._single_write(spec, body)
        return _reply(201, {"id": result["id"], "success": True, "errors": []}, records=1)

    def _h_update(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[1])
        if segments[2] not in self._store[spec.name]:
            raise _HttpError(404, _NOT_FOUND, "NOT_FOUND")
        self._single_write(spec, body, record_id=segments[2])
        return _Reply(204, records=1)

    def _h_upsert(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[1])
        ext_field = self._ext_field_from_url(spec, segments[2])
        ids = self._lookup(spec, ext_field, segments[3])
        if len(ids) > 1:
            return _reply(300, [f"/services/data/v{version}/sobjects/{spec.name}/{rid}" for rid in ids],
                          records=1)
        if query.get("updateOnly", ["false"])[-1].lower() == "true" and not ids:
            raise _HttpError(404, _NOT_FOUND, "NOT_FOUND")
        result = self._single_write(spec, body, match_field=ext_field, match_value=segments[3])
        if result["created"]:
            return _reply(201, result, records=1,
                          headers={"Location": f"/services/data/v{version}/sobjects/{spec.name}/{result['id']}"})
        if _version(version) >= (46, 0):
            return _reply(200, result, records=1)
        return _Reply(204, records=1)  # before API 46.0 an update answered 204 No Content

    def _h_collections(self, version, segments, query, body) -> _Reply:
        spec = self._object_from_url(segments[2])
        ext_field = self._ext_field_from_url(spec, segments[3])
        data = self._json_body(body)
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise _HttpError(400, [{"message": "The request body needs a records list",
                                    "errorCode": "JSON_PARSER_ERROR"}])
        if len(records) > MAX_COLLECTION_RECORDS:
            raise _HttpError(400, [{"message": "record limit reached. cannot submit more than 200 "
                                               "records into this call", "errorCode": "EXCEEDED_ID_LIMIT"}])
        for record in records:
            attributes = record.get("attributes") if isinstance(record, dict) else None
            kind = attributes.get("type") if isinstance(attributes, dict) else None
            if not kind:
                raise _HttpError(400, [{"message": "Each record needs an attributes map with a type",
                                        "errorCode": "INVALID_TYPE"}])
            if kind.lower() != spec.name.lower():
                raise _HttpError(400, [{"message": f"The list can contain objects only of type "
                                                   f"{spec.name}, not {kind}", "errorCode": "INVALID_TYPE"}])
        for record in records:  # the body is read into sObjects before any record is written
            self._check_deserializable(spec, record, body)
        all_or_none = bool(data.get("allOrNone", False))

        def ext_value(record: dict) -> Any:
            return next((v for k, v in record.items() if k.lower() == ext_field.lower()), None)

        seen: dict[str, int] = {}
        for record in records:
            key = self._key(spec, ext_value(record))
            if key is not None:
                seen[key] = seen.get(key, 0) + 1
        undo: list = []
        results: list[dict] = []
        failed: list[bool] = []
        for record in records:
            value = ext_value(record)
            fields = {k: v for k, v in record.items() if k.lower() != ext_field.lower()}
            try:
                if seen.get(self._key(spec, value), 0) > 1:
                    raise _RecordError("DUPLICATE_EXTERNAL_ID",
                                       f"Duplicate external id specified: {value}", [ext_field])
                results.append(self._write(spec, fields, undo=undo, match_field=ext_field,
                                           match_value=value))
                failed.append(False)
            except _RecordError as exc:
                results.append({"success": False, "errors": [exc.for_collection()]})
                failed.append(True)
        if all_or_none and any(failed):
            self._rollback(undo)
            rolled = {"statusCode": _ROLLED_BACK[0], "message": _ROLLED_BACK[1], "fields": []}
            results = [result if bad else {"success": False, "errors": [dict(rolled)]}
                       for result, bad in zip(results, failed)]
        detail = ",".join(sorted({r["errors"][0]["statusCode"] for r in results if not r["success"]}))
        return _reply(200, results, records=len(records), detail=detail)

    # ---------------------------------------------------------------- queries

    def _value(self, spec: ObjectSpec, record: dict, path: str) -> Any:
        if "." not in path:
            return record.get(self._field(spec.name, path, register=False))
        rel, rest = path.split(".", 1)
        related = self._related(spec, record, rel)
        return None if related is None else self._value(related[0], related[1], rest)

    def _related(self, spec: ObjectSpec, record: dict, rel: str) -> tuple[ObjectSpec, dict] | None:
        found = self._relationship(spec.name, rel)
        if found is None:
            raise _HttpError(400, [{"message": f"Didn't understand relationship '{rel}' in field path. "
                                               f"If you are attempting to use a custom relationship, be "
                                               f"sure to append the '__r' after the custom relationship "
                                               f"name.", "errorCode": "INVALID_FIELD"}])
        return self._by_id(record.get(self._field(spec.name, found[1], register=False)))

    def _check_query_field(self, spec: ObjectSpec, path: str) -> None:
        if "." in path:
            return
        name = self._field(spec.name, path, register=False)
        if (spec.fields is not None and name not in spec.fields) or self.metadata.access(spec.name, name) is None:
            raise _HttpError(400, [{"message": f"No such column '{path}' on entity '{spec.name}'. If you "
                                               f"are attempting to use a custom field, be sure to append "
                                               f"the '__c' after the custom field name.",
                                    "errorCode": "INVALID_FIELD"}])

    def _project(self, spec: ObjectSpec, record: dict, fields: list[str], version: str) -> dict:
        out = self._record_json(spec, record, version, only=[])
        for path in fields:
            if "." not in path:
                name = self._field(spec.name, path, register=False)
                out[name] = record.get(name)
                continue
            rel, rest = path.split(".", 1)
            related = self._related(spec, record, rel)
            if related is None:
                out.setdefault(rel, None)
                continue
            nested = out.get(rel) or self._record_json(related[0], related[1], version, only=[])
            sub = self._project(related[0], related[1], [rest], version)
            sub.pop("attributes")
            nested.update(sub)
            out[rel] = nested
        return out

    def _h_query(self, version, segments, query, body) -> _Reply:
        batch = max(1, int(self.query_batch_size))
        if len(segments) == 2:  # queryMore
            cursor = self._cursors.pop(segments[1].split("-")[0], None)
            if cursor is None:
                raise _HttpError(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}])
            _, remaining, total = cursor
            return self._query_page(version, remaining, total, batch, "queryMore")
        soql = query.get("q", [""])[-1]
        if not soql.strip():
            raise _malformed("A query string has to be specified")
        parsed = _parse_soql(soql)
        spec = self._spec(parsed.sobject)
        if spec is None:
            raise _HttpError(400, [{"message": f"sObject type '{parsed.sobject}' is not supported. If you are "
                                               f"attempting to use a custom object, be sure to append the "
                                               f"'__c' after the entity name.", "errorCode": "INVALID_TYPE"}])
        for path in [*(parsed.fields or []), *(w[0] for w in parsed.where), *(o[0] for o in parsed.order)]:
            self._check_query_field(spec, path)
        rows = [record for record in self._store[spec.name].values()
                if all(_soql_match(self._value(spec, record, name), op, wanted)
                       for name, op, wanted in parsed.where)]
        for name, descending, nulls_last in reversed(parsed.order):
            present = [r for r in rows if self._value(spec, r, name) is not None]
            absent = [r for r in rows if self._value(spec, r, name) is None]
            present.sort(key=lambda r: _sort_key(self._value(spec, r, name)), reverse=descending)
            rows = present + absent if nulls_last else absent + present
        rows = rows[parsed.offset:]
        if parsed.limit is not None:
            rows = rows[:parsed.limit]
        if parsed.fields is None:
            return _reply(200, {"totalSize": len(rows), "done": True, "records": []}, detail=soql)
        projected = [self._project(spec, record, parsed.fields, version) for record in rows]
        return self._query_page(version, projected, len(projected), batch, soql)

    def _query_page(self, version: str, rows: list[dict], total: int, batch: int, detail: str) -> _Reply:
        page, rest = rows[:batch], rows[batch:]
        payload: dict[str, Any] = {"totalSize": total, "done": not rest, "records": page}
        if rest:
            locator = "01g" + secrets.token_hex(6)
            self._cursors[locator] = (version, rest, total)
            while len(self._cursors) > 100:
                self._cursors.popitem(last=False)
            payload["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{total - len(rest)}"
        return _reply(200, payload, records=len(page), detail=detail)
