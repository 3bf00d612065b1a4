"""A local HTTPS stand-in for Partnero's REST API (the parts partnero-sync calls).

``requests`` runs its true code path against it: TLS verified against the test CA
(tests/fakes/tls.py, shared with the Salesforce stand-in), bearer auth, Laravel-style answers.
Records live in memory.

    with FakePartnero() as fake:                  # or fake.start() / fake.stop()
        fake.add("partners", {"id": "ptn_1", "email": "a@example.com"})
        settings = PartneroApiSettings(api_key=fake.api_key, api_url=fake.url)
        # with REQUESTS_CA_BUNDLE=fake.ca_bundle (the ``partnero_api`` fixture sets it)

Exposes ``url`` (``https://127.0.0.1:PORT/v1``), ``api_key``, ``ca_bundle``; the lists
``partners``, ``customers``, ``transactions`` (in order; ``add``, ``update``, ``remove``; a partner
is found by ``id``, the others by ``key``) and ``webhooks``; ``requests``, the log of every
``(method, path, query)`` the server got (query a dict of the last value of each parameter), and
``last_headers``.

Programs, as Partnero has them: one API key reads one program's data. The stand-in itself is a
first program (its ``api_key`` and lists above); ``fake.program()`` adds another, served by the
same server, with its own ``api_key``, lists, webhooks and ``requests`` (those made with its
key). ``revoke()`` on either makes its key a 401 from then on, the others unaffected.

    other = fake.program()                        # a FakeProgram: add, find, update, remove
    other.add("partners", {"id": "ptn_1"})        # the same id as the first program's: no clash

Modelled:

* ``GET /v1/{partners,customers,transactions}?limit=&page=``: ``limit`` 1-250 (default 15),
  ``page`` from 1; anything else is a 422 with Laravel's ``message`` and ``errors``. The answer is
  ``{"data", "links", "meta", "status": 1}``; ``pagination = "simple"`` (the default, as
  Partnero's reference shows: ``links.next``, no ``last_page``/``total``) or ``"length_aware"``
  (also ``meta.last_page``, ``meta.total``, ``links.last``). ``page_cap = n`` pages at most n
  objects whatever ``limit`` asks (a valid ``limit`` above it is not refused), as a Laravel app
  paginating by ``min(limit, n)`` does: ``meta.per_page`` is n, ``links.next`` names the next page,
  ``page`` counts pages of n. The links carry only ``page``, as Laravel writes them and as
  Partnero's reference shows (``?page=1``). ``before_page(hook)`` calls
  ``hook(entity, page_number)`` before a page is cut, so a test can change records between pages.
* ``GET /v1/{entity}/{id or key}``: ``{"data": {...}, "status": 1}``, or 404.
* ``GET /v1/webhooks`` (limit 1-100, default 10), ``GET/PUT/DELETE /v1/webhooks/{key}``,
  ``POST /v1/webhooks``: name, url (http or https) and a non-empty list of known events are
  required (422 naming the fields otherwise; an event not in ``events`` is refused as
  ``events.N``, as Laravel names an element of a list); a new webhook gets a fresh ``key`` and ``signature``
  and answers 201. ``signature_on_update = False`` leaves ``signature`` out of the PUT's answer.
* 401 ``{"message": "Unauthenticated."}`` without the bearer token of a program, or with a revoked one;
  a program's key reads and writes that program's lists and webhooks only.
* ``throttle(n, retry_after=1)``: the next n requests answer 429 with ``Retry-After`` and
  ``X-RateLimit-*``; ``fail(n, status=503)``: the next n answer that status; ``latency`` seconds
  before every answer.
"""

from __future__ import annotations

import json
import secrets
import ssl
import string
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fakes import tls

__all__ = ["FakePartnero", "FakeProgram", "ENTITIES", "EVENTS"]

ENTITIES = ("partners", "customers", "transactions")
#: The id field of each list.
ID_FIELD = {"partners": "id", "customers": "key", "transactions": "key", "webhooks": "key"}
#: Event types Partnero's reference and its n8n node name.
EVENTS = frozenset({
    "partner.created", "partner.updated", "partner.deleted", "partner.approved", "partner.rejected",
    "partner.archived", "customer.created", "customer.updated", "customer.deleted", "customer.credited",
    "customer.rewarded", "transaction.created", "transaction.updated", "transaction.deleted",
    "lead.submitted", "lead.converted", "lead.rejected",
})
_ALPHANUM = string.ascii_letters + string.digits
_LIMITS = {"webhooks": (1, 100, 10)}
_DEFAULT_LIMITS = (1, 250, 15)


class _Answer(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _invalid(errors: dict[str, str]) -> _Answer:
    """Laravel's 422: the first message, and every field's."""
    first = next(iter(errors.values()))
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return _Answer(422, {"message": first + more, "errors": {k: [v] for k, v in errors.items()}})


def _token(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUM) for _ in range(length))


class _Server(tls.TLSServer):
    block_on_close = False

    def __init__(self, fake: FakePartnero, context: ssl.SSLContext):
        self.fake = fake
        super().__init__(_Handler, context)


class _Handler(tls.TLSHandler):
    server_version = "FakePartnero/1.0"
    timeout = 10

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, headers = self.server.fake._serve(self.command, self.path, self.headers, body)
        self.answer(status, json.dumps(payload).encode(), "application/json", headers)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class FakeProgram:
    """One Partnero program's data, as one API key reads it: its lists and its webhooks."""

    def __init__(self, api_key: str | None = None, lock: threading.RLock | None = None):
        self.api_key = api_key or f"test_{_token(40)}"
        self.partners: list[dict] = []
        self.customers: list[dict] = []
        self.transactions: list[dict] = []
        self.webhooks: list[dict] = []
        #: The requests made with this program's key (the first program's: every request the server got).
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: Whether its key was revoked: every request with it is then a 401.
        self.revoked = False
        self._lock = lock or threading.RLock()

    def revoke(self) -> None:
        """Revoke the program's API key, as a person does in Partnero: a 401 from now on."""
        self.revoked = True

    def _list(self, entity: str) -> list[dict]:
        if entity not in (*ENTITIES, "webhooks"):
            raise ValueError(f"entity is one of {', '.join(ENTITIES)} or webhooks")
        return getattr(self, entity)

    def add(self, entity: str, obj: dict) -> dict:
        """Append ``obj`` to ``entity``'s list (it needs its id or key); returns it."""
        if not obj.get(ID_FIELD[entity]):
            raise ValueError(f"a {entity} object needs its {ID_FIELD[entity]}")
        with self._lock:
            self._list(entity).append(obj)
        return obj

    def find(self, entity: str, key: str) -> dict | None:
        with self._lock:
            return next((o for o in self._list(entity) if o.get(ID_FIELD[entity]) == key), None)

    def update(self, entity: str, key: str, **fields: Any) -> dict:
        with self._lock:
            found = self.find(entity, key)
            if found is None:
                raise KeyError(key)
            found.update(fields)
            return found

    def remove(self, entity: str, key: str) -> None:
        with self._lock:
            found = self.find(entity, key)
            if found is None:
                raise KeyError(key)
            self._list(entity).remove(found)


class FakePartnero(FakeProgram):
    """Partnero's REST API, in memory, behind TLS on 127.0.0.1: a first program (this object's
    lists) and any others ``program()`` adds, each read with its own key (see the module doc)."""

    def __init__(self, *, api_key: str | None = None, pagination: str = "simple", page_cap: int | None = None):
        if pagination not in ("simple", "length_aware"):
            raise ValueError("pagination is 'simple' or 'length_aware'")
        super().__init__(api_key, threading.RLock())
        self.pagination = pagination
        #: The most objects a list page holds, whatever ``limit`` asks (None: as asked).
        self.page_cap = page_cap
        #: Every program served, by API key; this object is the first.
        self.programs: dict[str, FakeProgram] = {self.api_key: self}
        #: The headers of the latest request.
        self.last_headers: dict[str, str] = {}
        self.latency = 0.0
        self.signature_on_update = True
        #: The event types a webhook may subscribe to; others are refused one by one (422).
        self.events: set[str] = set(EVENTS)
        self._hook: Callable[[str, int], None] | None = None
        self._throttled = 0
        self._retry_after = "1"
        self._failing: list[int] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_bundle = tls.ca_bundle()
        self.port = 0

    # -- life --------------------------------------------------------------------------------

    def start(self) -> FakePartnero:
        if self._server is None:
            self._server = _Server(self, tls.server_context())
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-partnero", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakePartnero:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    # -- programs ----------------------------------------------------------------------------

    def program(self, api_key: str | None = None) -> FakeProgram:
        """Another program, served by the same server and read with its own key (a new one unless given)."""
        other = FakeProgram(api_key, self._lock)
        with self._lock:
            if other.api_key in self.programs:
                raise ValueError("that API key is already another program's")
            self.programs[other.api_key] = other
        return other

    # -- switches ----------------------------------------------------------------------------

    def throttle(self, n: int, retry_after: int | str = 1) -> None:
        """The next ``n`` requests answer 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self._throttled, self._retry_after = n, str(retry_after)

    def fail(self, n: int, status: int = 503) -> None:
        """The next ``n`` requests answer ``status``."""
        with self._lock:
            self._failing = [status] * n

    def before_page(self, hook: Callable[[str, int], None] | None) -> Callable[[str, int], None] | None:
        """Call ``hook(entity, page_number)`` before each list page is cut (None: no hook)."""
        self._hook = hook
        return hook

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, method: str, target: str, headers, body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self.requests.append((method, parts.path, query))
            self.last_headers = dict(headers.items())
        if self.latency:
            time.sleep(self.latency)
        try:
            program = self._gate(headers)
            with self._lock:
                if program is not self:
                    program.requests.append((method, parts.path, query))
            return self._route(program, method, [unquote(s) for s in parts.path.split("/")[1:]], query, body)
        except _Answer as answer:
            return answer.status, answer.body, answer.headers

    def _gate(self, headers) -> FakeProgram:
        """The program the request's key reads; a 401 without a key of a program, or a revoked one."""
        with self._lock:
            if self._failing:
                status = self._failing.pop(0)
                raise _Answer(status, {"message": "Server Error" if status == 500 else "Service Unavailable"})
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        program = self.programs.get(token) if scheme == "Bearer" else None
        if program is None or program.revoked:
            raise _Answer(401, {"message": "Unauthenticated."})
        with self._lock:
            if self._throttled > 0:
                self._throttled -= 1
                raise _Answer(429, {"message": "Too Many Attempts."},
                              {"Retry-After": self._retry_after, "X-RateLimit-Limit": "120",
                               "X-RateLimit-Remaining": "0"})
        return program

    def _route(self, program: FakeProgram, method: str, segments: list[str], query: dict,
               body: bytes) -> tuple[int, Any, dict]:
        if len(segments) < 2 or segments[0] != "v1" or segments[1] not in (*ENTITIES, "webhooks"):
            raise _Answer(404, {"message": "Not Found.", "status": 0})
        entity, rest = segments[1], segments[2:]
        if len(rest) > 1:
            raise _Answer(404, {"message": "Not Found.", "status": 0})
        if not rest:
            if method == "GET":
                return 200, self._page(program, entity, query), {}
            if method == "POST" and entity == "webhooks":
                return 201, {"data": self._create_webhook(program, self._document(body)), "status": 1}, {}
            raise _Answer(405, {"message": f"The {method} method is not supported for this route."})
        key = rest[0]
        found = program.find(entity, key)
        if found is None:
            raise _Answer(404, {"message": "Not Found.", "status": 0})
        if method == "GET":
            return 200, {"data": found, "status": 1}, {}
        if entity == "webhooks" and method == "PUT":
            return 200, {"data": self._update_webhook(found, self._document(body)), "status": 1}, {}
        if entity == "webhooks" and method == "DELETE":
            program.remove("webhooks", key)
            return 200, {"status": 1}, {}
        raise _Answer(405, {"message": f"The {method} method is not supported for this route."})

    def _page(self, program: FakeProgram, entity: str, query: dict) -> dict:
        low, high, default = _LIMITS.get(entity, _DEFAULT_LIMITS)
        limit = self._whole(query, "limit", default)
        number = self._whole(query, "page", 1)
        if not low <= limit <= high:
            word = "less" if limit < low else "greater"
            raise _invalid({"limit": f"The limit field must not be {word} than {low if limit < low else high}."})
        if number < 1:
            raise _invalid({"page": "The page field must be at least 1."})
        if self.page_cap is not None:
            limit = min(limit, self.page_cap)
        if self._hook is not None and entity in ENTITIES:
            self._hook(entity, number)
        start = (number - 1) * limit
        with self._lock:  # only the page is copied: a list may hold 100,000 objects (bench/backfill.py)
            listed = program._list(entity)
            cut = [dict(o) for o in listed[start:start + limit]]
            total = len(listed)
        path = f"{self.url}/{entity}"
        last_page = max(1, -(-total // limit))
        more = start + limit < total
        links = {"first": f"{path}?page=1", "last": None,
                 "prev": f"{path}?page={number - 1}" if number > 1 else None,
                 "next": f"{path}?page={number + 1}" if more else None}
        meta: dict[str, Any] = {"current_page": number, "from": start + 1 if cut else None, "path": path,
                                "per_page": limit, "to": start + len(cut) if cut else None}
        if self.pagination == "length_aware":
            links["last"] = f"{path}?page={last_page}"
            meta.update(last_page=last_page, total=total)
        return {"data": cut, "links": links, "meta": meta, "status": 1}

    @staticmethod
    def _whole(query: dict, name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise _invalid({name: f"The {name} field must be an integer."}) from None

    @staticmethod
    def _document(body: bytes) -> dict:
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            raise _Answer(400, {"message": "The request body is not valid JSON.", "status": 0}) from None
        if not isinstance(document, dict):
            raise _invalid({"name": "The name field is required."})
        return document

    def _check_webhook(self, document: dict, partial: bool) -> dict[str, str]:
        errors: dict[str, str] = {}
        for name in ("name", "url", "events"):
            if name not in document or document[name] in (None, "", []):
                if not partial:
                    errors[name] = f"The {name} field is required."
        name, url, events = document.get("name"), document.get("url"), document.get("events")
        if name is not None and "name" not in errors and (not isinstance(name, str) or len(name) > 255):
            errors["name"] = "The name field must be a string of at most 255 characters."
        if url is not None and "url" not in errors and (
                not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048):
            errors["url"] = "The url field must be a valid URL."
        if events is not None and "events" not in errors:
            if not isinstance(events, list) or not events:
                errors["events"] = "The events field must be an array."
            else:
                for n, event in enumerate(events):
                    if event not in self.events:
                        errors[f"events.{n}"] = f"The selected events.{n} is invalid."
        return errors

    def _create_webhook(self, program: FakeProgram, document: dict) -> dict:
        errors = self._check_webhook(document, partial=False)
        if errors:
            raise _invalid(errors)
        webhook = {"key": document.get("key") or _token(12), "name": document["name"], "url": document["url"],
                   "is_active": bool(document.get("is_active", True)), "signature": _token(16),
                   "events": list(document["events"])}
        return dict(program.add("webhooks", webhook))

    def _update_webhook(self, webhook: dict, document: dict) -> dict:
        errors = self._check_webhook(document, partial=True)
        if errors:
            raise _invalid(errors)
        with self._lock:
            for name in ("name", "url", "events", "is_active"):
                if name in document:
                    webhook[name] = list(document[name]) if name == "events" else document[name]
            answer = dict(webhook)
        if not self.signature_on_update:
            answer.pop("signature")
        return answer
