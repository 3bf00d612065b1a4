"""Reading a Partnero delivery: the one JSON parse the receiver and the worker share, and its
envelope. Pure functions, no I/O.

A delivery is ``{"event", "url", "webhook_key", "created_at", "data"}``; an older form carries
``timestamp`` instead of ``created_at``. What ``data`` becomes is the mappings' business.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from itertools import accumulate
from typing import Any

MAX_EVENT_LENGTH = 100
#: How deeply arrays and objects may nest in a delivery (Partnero's go about five deep). Checked
#: before parsing, so the parser never runs out of stack, whatever thread it runs on.
MAX_DEPTH = 64
#: Unix times with more digits than this are not times (year 5138 has 11).
_MAX_UNIX_DIGITS = 12


class MalformedDelivery(ValueError):
    """The body is not a delivery we can read; the message says why, in a short sentence."""


class ExactFloat(float):
    """A JSON number as a float that remembers the digits it was written with."""

    text: str

    def __new__(cls, text: str) -> ExactFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


def parse(body: bytes) -> Any:
    """The JSON of ``body`` exactly as both the receiver and the worker read it.

    Strict UTF-8 JSON (RFC 8259): every number keeps the digits it was written with
    (``ExactFloat``), and what JSON leaves open is refused rather than guessed: ``NaN`` and
    ``Infinity`` (not JSON), an object with the same key twice (parsers disagree on which one
    counts), nesting deeper than ``MAX_DEPTH``, and integers longer than Python reads (4300
    digits). Raises ``MalformedDelivery`` saying which.
    """
    if _too_deep(body):
        raise MalformedDelivery(f"body nests arrays or objects more than {MAX_DEPTH} deep")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedDelivery("body is not valid JSON") from exc  # JSON is UTF-8 (RFC 8259)
    try:
        return json.loads(text, parse_float=ExactFloat, parse_constant=_no_constant,
                          object_pairs_hook=_object)
    except MalformedDelivery:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError cannot happen below MAX_DEPTH
        raise MalformedDelivery("body is not valid JSON") from exc


def read_event(body: bytes) -> tuple[dict[str, Any], str]:
    """Parse ``body`` (``parse``) as a JSON object and return it with its event type.

    This is what the receiver checks before storing: a JSON object with a usable ``event``.
    """
    document = parse(body)
    if not isinstance(document, dict):
        raise MalformedDelivery("body must be a JSON object")
    event = document.get("event")
    if not isinstance(event, str) or not event.strip():
        raise MalformedDelivery('body has no "event"')
    if len(event) > MAX_EVENT_LENGTH or not event.isprintable():
        raise MalformedDelivery('"event" is not a Partnero event type')
    return document, event


def _no_constant(name: str) -> Any:
    raise MalformedDelivery(f"body is not valid JSON ({name} is not a JSON number)")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise MalformedDelivery("body has an object with the same key twice")
    return found


#: A JSON string, escapes included: what may hold brackets that do not nest anything.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Each bracket as a step up (2) or down (0), less one: see _too_deep.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def _too_deep(body: bytes) -> bool:
    """Whether arrays and objects in ``body`` nest deeper than ``MAX_DEPTH``.

    Almost every delivery has fewer brackets than that in all, which settles it at C speed;
    otherwise the brackets outside strings are walked, one step each.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(step - 1 for step in brackets.translate(_STEPS)), default=0) > MAX_DEPTH


def parse_timestamp(value: Any) -> datetime | None:
    """A Partnero time (``2025-05-07T10:30:00.000000Z``, or Unix seconds) as an aware UTC datetime.

    Unreadable values give None rather than an error: the time orders deliveries, it is not
    worth refusing a delivery for.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if abs(value) >= 10**_MAX_UNIX_DIGITS:  # also before converting a huge int, which would raise
            return None
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return parse_timestamp(int(text)) if len(text) <= _MAX_UNIX_DIGITS else None
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


def dump(document: Any) -> bytes:
    """``document`` as compact JSON bytes that ``parse`` reads back exactly: an ``ExactFloat`` is
    written with the digits it was read with, so amounts pass through unchanged.

    For documents partnero-sync makes itself (a backfill's deliveries, from objects ``parse``
    read): only what ``parse`` returns is written (objects with string keys, arrays, strings,
    numbers, booleans, null); anything else raises ``TypeError``.
    """
    if _plain(document):  # every number writes back as it was read: the C encoder is exact
        return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    parts: list[str] = []
    _write(document, parts)
    return "".join(parts).encode("utf-8")


def _plain(value: Any) -> bool:
    """Whether ``json.dumps`` writes ``value`` exactly: each ``ExactFloat`` is written as Python
    writes its float (149.0, 44.7), not with digits of its own (2.50, 1e2)."""
    if isinstance(value, dict):
        return all(_plain(item) for item in value.values())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, ExactFloat):
        return float.__repr__(value) == value.text
    return not isinstance(value, tuple)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, ExactFloat):
        out.append(value.text)
    elif isinstance(value, str) or value is None or isinstance(value, bool | int | float):
        out.append(json.dumps(value, ensure_ascii=False, allow_nan=False))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
            out.append(("," if i else "") + json.dumps(key, ensure_ascii=False) + ":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")
