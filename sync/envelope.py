"""Reading a Partnero delivery's envelope: pure functions, no I/O.

A delivery is ``{"event", "url", "webhook_key", "created_at", "data"}``; an older form carries
``timestamp`` instead of ``created_at``. What ``data`` becomes is the mappings' business.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

MAX_EVENT_LENGTH = 100


class MalformedDelivery(ValueError):
    """The body is not a delivery we can read; the message says why, in a short sentence."""


def read_event(body: bytes) -> tuple[dict[str, Any], str]:
    """Parse ``body`` as a JSON object and return it with its event type.

    This is what the receiver checks before storing: a JSON object with a usable ``event``.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedDelivery("body is not valid JSON") from exc
    if not isinstance(document, dict):
        raise MalformedDelivery("body must be a JSON object")
    event = document.get("event")
    if not isinstance(event, str) or not event.strip():
        raise MalformedDelivery('body has no "event"')
    if len(event) > MAX_EVENT_LENGTH or not event.isprintable():
        raise MalformedDelivery('"event" is not a Partnero event type')
    return document, event


def parse_timestamp(value: Any) -> datetime | None:
    """A Partnero time (``2025-05-07T10:30:00.000000Z``, or Unix seconds) as an aware UTC datetime.

    Unreadable values give None rather than an error: the time orders deliveries, it is not
    worth refusing a delivery for.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return parse_timestamp(int(text))
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        return None
