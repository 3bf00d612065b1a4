"""Posting one message to an incoming webhook: the one code that sends the operator's alerts and the
mappings' notifications, and classifies what the endpoint answered.

A webhook's URL is a secret (Slack's carries its token): it never appears in an error, a log line
or a message, and neither does the body sent. An error says only how the endpoint answered
("HTTP 503", "timed out").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from sync.core import backoff
from sync.core.clock import system_clock
from sync.core.errors import PermanentError, TransientError
from sync.mapping.spec import DEFAULT_MESSAGE_FORMAT, MESSAGE_FORMATS

#: What a webhook's body may look like (ALERT_WEBHOOK_FORMAT, a mapping's notify entry): ``slack`` is
#: ``{"text": ...}``, which Slack's, Mattermost's and Microsoft Teams' incoming webhooks all take;
#: ``teams`` a Teams MessageCard with a title; ``json`` the text beside the message's facts, for any
#: other endpoint. Their one home is the mapping engine (below the settings, which check them too).
FORMATS = MESSAGE_FORMATS
DEFAULT_FORMAT = DEFAULT_MESSAGE_FORMAT
#: Seconds to connect, then to read the answer: a slow endpoint costs a sender this at most.
TIMEOUT = (5, 10)


class WebhookFailed(TransientError):
    """The endpoint could not take the message now (5xx, 429, a time-out, no connection): try again
    later, after ``retry_after`` seconds when it said so."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class WebhookRefused(PermanentError):
    """The endpoint refused the message (a 4xx but 429, or a redirect): sending it again unchanged
    is refused again, until a person fixes the URL or the endpoint."""

    def __init__(self, reason: str, *, status: int | None = None):
        super().__init__(reason)
        self.status = status


def body(text: str, *, format: str = DEFAULT_FORMAT, title: str | None = None,
         facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body that carries ``text`` in ``format`` (one of ``FORMATS``); ``title`` heads a
    Teams card, ``facts`` go beside the text in ``json``."""
    if format == "teams":
        card = {"@type": "MessageCard", "@context": "https://schema.org/extensions",
                "summary": title or text[:80], "text": text}
        return card | ({"title": title} if title else {})
    if format == "json":
        return {**(facts or {}), "title": title, "text": text}
    return {"text": text}


def post(url: str, payload: Mapping[str, Any], *, session: requests.Session | None = None,
         timeout: tuple[float, float] = TIMEOUT) -> int:
    """POST ``payload`` as JSON to ``url``; the HTTP status when the endpoint took it (2xx).

    Raises ``WebhookFailed`` when it could not take it now and ``WebhookRefused`` when it refused
    it. Redirects are not followed: a webhook that moved is a URL to fix, and following one could
    carry the message somewhere else."""
    sender = session or requests
    try:
        response = sender.post(url, json=dict(payload), timeout=timeout, allow_redirects=False)
    except requests.Timeout:
        raise WebhookFailed("timed out") from None
    except requests.ConnectionError:
        raise WebhookFailed("could not connect") from None
    except requests.RequestException as exc:  # an invalid URL, and the rest: never its text (the URL)
        raise WebhookRefused(f"could not send ({type(exc).__name__})") from None
    return classify(response.status_code, response.headers.get("Retry-After"))


def classify(status: int, retry_after: str | None = None) -> int:
    """``status`` when it says the message was taken; else the error it means (see ``post``)."""
    if 200 <= status < 300:
        return status
    if status == 429 or status >= 500 or status == 408:
        asked = backoff.retry_after(retry_after, system_clock(), backoff.WEBHOOK_RETRY_AFTER_CAP)
        return _raise(WebhookFailed(f"HTTP {status}", status=status, retry_after=asked))
    return _raise(WebhookRefused(f"HTTP {status}", status=status))


def _raise(error: Exception) -> int:
    raise error
