"""The only code that speaks to Partnero's REST API, and what its answers mean for us.

Every answer is classified here, once (``_classify``): 401/403 is a key Partnero refuses
(``ApiKeyRefused``, a configuration error); 429, 5xx, time-outs and lost connections are passing
(waited for and tried again here, then ``PartneroUnavailable``); any other 4xx is a refusal of
this call (``PartneroRefused``).

What Partnero's public reference (docs.partnero.com, developers.partnero.com), its PHP SDK and its
n8n node say, and what is our guess:

* Base ``https://api.partnero.com/v1``, ``Authorization: Bearer <key>``, one key per program.
  Answers are JSON with ``"status": 1``; one object is ``{"data": {...}}``, a list is a Laravel
  resource collection ``{"data": [...], "links": {first, last, prev, next}, "meta": {...}}``.
* Lists take ``limit`` (1-250, default 15) and ``page``. The documented examples are Laravel's
  *simple* pagination (``links.next`` null on the last page; ``meta.per_page``, no
  ``meta.last_page`` or ``total``). A page may hold fewer objects than asked for and still not be
  the last: the server may cap ``limit`` (its ``meta.per_page`` then says the cap) [guess: that it
  keeps the same cap from page to page, as a Laravel app with a fixed ``min(limit, cap)`` does].
  So the end of a list is what ``links.next`` says (or, from a plain Laravel paginator, the
  top-level ``next_page_url``), else ``last_page``, else ``total``; only an answer with none of
  them is ended by a page shorter than its ``per_page`` (else than asked for). Pages are asked
  for by number with our own ``limit`` (the links Laravel writes carry only ``page``). The
  webhooks list documents a smaller ``limit`` (10-100), and the n8n node says 10-100 for every
  list [unclear: we ask 250 for the three entities, 100 for webhooks].
* Single objects: ``GET /partners/{id}``, ``/customers/{key}`` (documented);
  ``/transactions/{key}`` [guess: the reference documents ``GET /transactions?key=`` instead].
* Webhooks: ``GET /webhooks``, ``POST /webhooks`` (name, url, events, is_active), ``PUT`` and
  ``DELETE /webhooks/{key}``; a webhook is ``{key, name, url, is_active, signature, events}``,
  ``signature`` being the signing secret. The update's answer carries ``signature`` in the
  reference's example [guess: that it always does, and that it is unchanged].
* Error bodies carry a ``message`` (Laravel: 401 ``Unauthenticated.``, 422 with ``errors`` per
  field, 429 from the throttle with ``Retry-After``) [guess: Partnero keeps Laravel's defaults].
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests

from sync.core import backoff, envelope
from sync.core.clock import Clock, system_clock
from sync.core.envelope import MalformedDelivery
from sync.core.errors import ConfigurationError, PermanentError, SyncError, TransientError
from sync.rules.listed import ENTITIES
from sync.settings import DEFAULT_PROGRAM, PartneroApiSettings, Program, redact_url

log = logging.getLogger(__name__)

#: The largest ``limit`` Partnero takes on a list.
MAX_LIMIT = 250
#: The page size for the webhooks list (its documented range is 10-100).
WEBHOOKS_LIMIT = 100
#: Tries per call before a passing failure is given to the caller.
ATTEMPTS = 5


class ApiKeyRefused(ConfigurationError):
    """Partnero refused the API key (401, 403): a person must set the right one."""


class PartneroUnavailable(TransientError):
    """Partnero could not answer (429, 5xx, a time-out, a lost connection), also after retries."""


class PartneroRefused(PermanentError):
    """Partnero refused this call (a 4xx other than 401/403/429): trying it again cannot help."""

    def __init__(self, message: str, status: int, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        #: The fields a 422 names (Laravel's ``errors``; ``events.3``: the fourth of a list).
        self.fields = fields


@dataclass(frozen=True)
class Page:
    """One page of a list, as Partnero sent it."""

    entity: str
    #: The page asked for (1-based).
    number: int
    #: The ``data`` list as sent.
    objects: list[dict]
    #: ``meta.last_page`` and ``meta.total`` when given (Partnero's simple pagination leaves them out).
    last_page: int | None
    total: int | None
    #: When the request was sent (UTC): the state listed is at least this new.
    observed_at: datetime
    #: The page size asked for.
    limit: int = MAX_LIMIT
    #: Whether a next page was named (``links.next``, or a plain paginator's ``next_page_url``);
    #: None when the answer had neither.
    has_next: bool | None = field(default=None)
    #: The page size the server used (``meta.per_page``), when it said: below ``limit`` when capped.
    per_page: int | None = field(default=None)

    @property
    def is_last(self) -> bool:
        """Whether the list ends here: by its next link when the answer has one, else by
        ``last_page``, else by ``total``; only without any of them, by a page shorter than the
        server's page size (``per_page``, else ``limit``). An empty page always ends it."""
        if not self.objects:
            return True
        if self.has_next is not None:
            return not self.has_next
        if self.last_page is not None:
            return self.number >= self.last_page
        size = self.per_page or self.limit
        if self.total is not None:
            return self.number * size >= self.total
        return len(self.objects) < size

    @property
    def short(self) -> bool:
        """Whether the server gave fewer than asked for on a page that is not the last."""
        return (self.per_page is not None and self.per_page < self.limit) or (
            len(self.objects) < self.limit and not self.is_last)


def parse_page(entity: str, number: int, limit: int, body: Any, observed_at: datetime) -> Page:
    """The page a list's answer describes; ``PartneroUnavailable`` when it is not one.

    Reads a Laravel resource collection (``links`` {next, ...} and ``meta`` {per_page, ...}) and a
    plain Laravel paginator (``next_page_url``, ``per_page``, ... beside ``data``)."""
    objects = body.get("data") if isinstance(body, dict) else None
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise PartneroUnavailable(f"Partnero's answer to GET /{entity} is not a list of objects")
    meta = body.get("meta")
    if not isinstance(meta, dict):
        meta = body if "current_page" in body else {}
    links = body.get("links")
    if isinstance(links, dict) and "next" in links:
        has_next: bool | None = bool(links.get("next"))
    elif "next_page_url" in body:
        has_next = bool(body.get("next_page_url"))
    else:
        has_next = None
    per_page = _count(meta.get("per_page"))
    return Page(entity, number, objects, _count(meta.get("last_page")), _count(meta.get("total")),
                observed_at, limit, has_next, per_page or None)


def _count(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():  # a paginator built from the raw query string
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("partnero-sync")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class PartneroApi:
    """Partnero's REST API for one program (the program of the API key)."""

    def __init__(self, settings: PartneroApiSettings, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 30, clock: Clock = system_clock,
                 program: str = DEFAULT_PROGRAM, key_variable: str = "PARTNERO_API_KEY", named: bool = False):
        self._key = settings.require_key()
        #: The program whose key this is, and the variable that sets it: a refused key names both.
        self.program = program
        self.key_variable = key_variable
        #: Whether PARTNERO_PROGRAMS named the program (else it is the deployment's one program).
        self.named = named
        self.base_url = settings.api_url.rstrip("/")
        # requests honours REQUESTS_CA_BUNDLE, so a private CA can be trusted; verification stays on.
        self.session = session or requests.Session()
        self.sleep = sleep
        self.timeout = timeout
        #: What time it is: when a page was observed, and what a Retry-After date means.
        self.clock = clock
        self._headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json",
                         "User-Agent": f"partnero-sync/{_version()}"}
        if settings.in_clear:  # settings allow it to this machine only
            log.warning("PARTNERO_API_URL is plain http (%s): the API key travels unencrypted; use https "
                        "anywhere but a local stand-in", redact_url(self.base_url))

    @classmethod
    def of(cls, program: Program, **options: Any) -> PartneroApi:
        """The API of ``program``, with its own key; ``ConfigurationError`` naming its variable
        (PARTNERO_<NAME>_API_KEY, or PARTNERO_API_KEY) when it has none."""
        program.require_api_key()
        return cls(program.partnero, program=program.name, key_variable=program.variable("API_KEY"),
                   named=program.named, **options)

    def __repr__(self) -> str:  # never show the key
        return f"PartneroApi({self.base_url!r}, program={self.program!r})"

    # -- records -------------------------------------------------------------------------------

    def page(self, entity: str, number: int, limit: int = MAX_LIMIT) -> Page:
        """One page of ``entity``'s list (``number`` from 1)."""
        return next(self.pages(entity, number, limit))

    def pages(self, entity: str, start: int = 1, limit: int = MAX_LIMIT) -> Iterator[Page]:
        """Pages of ``entity`` from ``start`` on, each fetched when the previous one is consumed,
        up to the last (``Page.is_last``)."""
        _check_entity(entity)
        if start < 1 or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"page from 1 and limit between 1 and {MAX_LIMIT}")
        return self._walk(entity, start, limit)

    def _walk(self, entity: str, number: int, limit: int) -> Iterator[Page]:
        """The one way a list is read page by page; says once when pages come shorter than asked."""
        told = False
        while True:
            body, sent = self._call("GET", f"/{entity}", f"GET /{entity}", params={"limit": limit, "page": number})
            page = parse_page(entity, number, limit, body, sent)
            if page.short and not told:
                given = page.per_page or len(page.objects)
                log.info("Partnero answered GET /%s with %d objects a page (%d asked for): following its "
                         "pages to the end", entity, given, limit)
                told = True
            yield page
            if page.is_last:
                return
            number += 1

    def get(self, entity: str, key: str) -> dict | None:
        """One object of ``entity`` by its id (partners) or key; None when Partnero has none."""
        _check_entity(entity)
        body, _ = self._call("GET", f"/{entity}/{_segment(key)}", f"GET /{entity}/{{key}}", missing_ok=True)
        return None if body is None else _data(body, f"GET /{entity}/{{key}}")

    # -- webhook subscriptions -----------------------------------------------------------------

    def webhooks(self) -> list[dict]:
        """Every webhook subscription of the program (with its signing secret, ``signature``)."""
        return [obj for page in self._walk("webhooks", 1, WEBHOOKS_LIMIT) for obj in page.objects]

    def create_webhook(self, name: str, url: str, events: Sequence[str]) -> dict:
        """Subscribe ``url`` to ``events``; the answer carries the new ``key`` and ``signature``."""
        body, _ = self._call("POST", "/webhooks", "POST /webhooks", json=_webhook(name, url, events))
        return _data(body, "POST /webhooks")

    def update_webhook(self, key: str, name: str, url: str, events: Sequence[str]) -> dict:
        """Replace a subscription's name, URL and events, and make it active."""
        body, _ = self._call("PUT", f"/webhooks/{_segment(key)}", "PUT /webhooks/{key}",
                             json=_webhook(name, url, events))
        return _data(body, "PUT /webhooks/{key}")

    def delete_webhook(self, key: str) -> None:
        """Delete a subscription; ``PartneroRefused`` with status 404 when there is none."""
        self._call("DELETE", f"/webhooks/{_segment(key)}", "DELETE /webhooks/{key}")

    # -- the one way a call is made ------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, *, params: dict | None = None,
              json: dict | None = None, missing_ok: bool = False) -> tuple[Any, datetime]:
        """Send one call, waiting out passing failures; its JSON answer (None: a 404 that
        ``missing_ok`` allows) and when the answering request was sent. ``what`` names the call in
        logs and errors without any value."""
        sent_values = _strings(params) | _strings(json)
        for attempt in range(ATTEMPTS):
            sent = self.clock()
            try:
                response = self.session.request(method, self.base_url + path, params=params, json=json,
                                                 headers=self._headers, timeout=self.timeout)
            except requests.RequestException as exc:
                failure: SyncError = PartneroUnavailable(f"could not reach Partnero for {what}: {type(exc).__name__}")
                status, wait = type(exc).__name__, backoff.delay(backoff.API_DELAYS, attempt)
            else:
                if response.status_code == 404 and missing_ok:
                    return None, sent
                if 200 <= response.status_code < 300:
                    return _json(response, what), sent
                failure = _classify(response, what, sent_values | {self._key}, self._whose_key())
                if not isinstance(failure, PartneroUnavailable):
                    raise failure
                status = str(response.status_code)
                wait = backoff.retry_after(response.headers.get("Retry-After"), self.clock(),
                                           backoff.API_RETRY_AFTER_CAP)
                if wait is None:
                    wait = backoff.delay(backoff.API_DELAYS, attempt)
            if attempt + 1 == ATTEMPTS:
                raise failure
            log.warning("Partnero answered %s to %s%s: trying again in %.1f s (attempt %d of %d)",
                        status, what, f" (program {self.program})" if self.named else "", wait, attempt + 2, ATTEMPTS)
            self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _whose_key(self) -> str:
        """The key's variable and program, as a refusal names them."""
        whose = f"program {self.program}" if self.named else "this program"
        return f"{self.key_variable}, an API key of {whose}"


def _classify(response: requests.Response, what: str, sent: set[str],
              whose: str = "PARTNERO_API_KEY, an API key of this program") -> SyncError:
    """What an answer that is not 2xx means: the one place Partnero's statuses are read. ``whose``
    names the key's variable and its program, for a refused key."""
    status = response.status_code
    if status in (401, 403):
        reason = "not allowed for this key" if status == 403 else "not a valid key"
        return ApiKeyRefused(
            f"Partnero refused the API key ({status}: {reason}): check {whose} "
            "(Integration -> API in Partnero; one key belongs to one program)"
        )
    if status == 429:
        return PartneroUnavailable(f"Partnero's rate limit was reached ({what}, 429)")
    if status >= 500 or status in (408, 425):
        return PartneroUnavailable(f"Partnero could not answer {what} ({status})")
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    errors = body.get("errors")
    fields = tuple(sorted(str(name)[:64] for name in errors)) if isinstance(errors, dict) else ()
    return PartneroRefused(f"Partnero refused {what} ({status}){_reason(body.get('message'), fields, sent)}",
                           status, fields)


def _reason(message: Any, fields: tuple[str, ...], sent: set[str]) -> str:
    """Partnero's ``message`` (unless it quotes a value we sent) and the fields a 422 names."""
    text = ""
    if isinstance(message, str) and message.strip() and not any(v in message for v in sent):
        text = ": " + (message.strip() if len(message) <= 300 else message[:299] + "…")
    if fields:
        text += f" (fields: {', '.join(fields[:10])})"
    return text


def _strings(document: Any) -> set[str]:
    """The texts in what we send (3 characters or more): an error quoting one is not shown."""
    if isinstance(document, dict):
        return set().union(*(_strings(v) for v in document.values())) if document else set()
    if isinstance(document, list | tuple):
        return set().union(*(_strings(v) for v in document)) if document else set()
    return {document} if isinstance(document, str) and len(document) >= 3 else set()


def _json(response: requests.Response, what: str) -> Any:
    """The answer read by the one JSON parse deliveries go through (``envelope.parse``): amounts
    keep the digits Partnero wrote, so a listed reward books exactly what its webhook would."""
    if not response.content:
        return {}
    try:
        return envelope.parse(response.content)
    except MalformedDelivery:
        raise PartneroUnavailable(f"Partnero's answer to {what} is not JSON ({response.status_code})") from None


def _data(body: Any, what: str) -> dict:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise PartneroUnavailable(f"Partnero's answer to {what} holds no object")
    return data


def _webhook(name: str, url: str, events: Sequence[str]) -> dict:
    return {"name": name, "url": url, "events": list(events), "is_active": True}


def _segment(key: str) -> str:
    if not key:
        raise ValueError("an empty key")
    return quote(key, safe="")


def _check_entity(entity: str) -> None:
    if entity not in ENTITIES:
        raise ValueError(f"entity is one of {', '.join(ENTITIES)}")
