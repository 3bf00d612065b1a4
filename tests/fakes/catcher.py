"""An HTTPS stand-in for an incoming webhook (Slack's, Mattermost's, Teams', or any JSON endpoint):
it keeps every message posted to it, and answers as it is told.

Slack's incoming webhooks answer ``200 ok`` (text/plain) to a message they took, ``400
invalid_payload`` to a body that is not a message, ``404 no_service`` or ``410
channel_is_archived`` to a webhook that is gone, and ``429`` with ``Retry-After`` when posted to
more than about once a second; the catcher answers the same, by default ``200 ok``.

    with Catcher() as catcher:           # https://127.0.0.1:PORT/hook/<name>, trusted through
        url = catcher.url("alerts")      # REQUESTS_CA_BUNDLE=catcher.ca_bundle (tls.ca_bundle())
        catcher.fail(2, status=503)      # the next two posts to any hook answer 503
        ...
        catcher.wait_for(1, hook="alerts")
        catcher.messages("alerts")       # the JSON bodies taken, oldest first
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from tests.fakes import tls

#: What Slack's incoming webhooks answer, by status.
_SLACK_TEXT = {200: "ok", 400: "invalid_payload", 404: "no_service", 410: "channel_is_archived",
               429: "rate_limited", 500: "internal_error", 503: "service_unavailable"}


@dataclass
class Posted:
    """One request the catcher got: the hook it was posted to, its JSON body (None: not JSON), its
    headers, and the status it was answered with."""

    hook: str
    body: object
    headers: dict[str, str]
    status: int
    raw: bytes = field(repr=False, default=b"")


class Catcher:
    """The stand-in: a TLS server on 127.0.0.1 and a free port, running while the ``with`` lasts."""

    def __init__(self) -> None:
        self.ca_bundle = tls.ca_bundle()
        self.posted: list[Posted] = []
        self._answers: list[tuple[int, dict[str, str]]] = []  # the next answers to give, then 200
        self._lock = threading.Condition()
        self._delay = 0.0
        catcher = self

        class Handler(tls.TLSHandler):
            timeout = 10

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                catcher._take(self, raw)

        self._server = tls.TLSServer(Handler, tls.server_context())
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Catcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, hook: str = "hook") -> str:
        """The URL of one incoming webhook; each ``hook`` keeps its own messages."""
        return f"https://127.0.0.1:{self.port}/hook/{hook}"

    def fail(self, times: int, *, status: int = 503, retry_after: int | None = None) -> None:
        """Answer the next ``times`` posts (to any hook) with ``status`` (and ``Retry-After``)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._answers.extend([(status, headers)] * times)

    def slow(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each post (a time-out, when longer than the sender's)."""
        self._delay = seconds

    def messages(self, hook: str | None = None) -> list[object]:
        """The bodies of the posts taken (answered 2xx), oldest first; of one ``hook``, or of all."""
        with self._lock:
            return [p.body for p in self.posted if 200 <= p.status < 300 and hook in (None, p.hook)]

    def wait_for(self, count: int, *, hook: str | None = None, timeout: float = 30.0) -> list[object]:
        """Wait until at least ``count`` messages were taken; then the messages."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.messages(hook)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the catcher took {len(self.messages(hook))} messages, not {count}")
                self._lock.wait(left)
            return self.messages(hook)

    def _take(self, handler: tls.TLSHandler, raw: bytes) -> None:
        if self._delay:
            time.sleep(self._delay)
        hook = handler.path.rsplit("/", 1)[-1]
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            status, headers = self._answers.pop(0) if self._answers else (200, {})
            if status == 200 and not isinstance(body, dict):
                status = 400
            self.posted.append(Posted(hook, body, dict(handler.headers), status, raw))
            self._lock.notify_all()
        handler.answer(status, _SLACK_TEXT.get(status, "error").encode(), "text/plain; charset=utf-8", headers)
