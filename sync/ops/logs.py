"""Logging shared by the web, the worker and the CLI: one JSON object per line, or readable text.

A line about one delivery carries its inbox id, event type and fingerprint as fields
(``log.info(..., extra=delivery_fields(...))``), never payload values; the text format shows them
in brackets after the message.

A traceback in a log line shows where each error in its chain was raised and its type; the text
of an error is shown only for our own (``SyncError``, written to be safe): a database's or a
library's may quote a delivery's values (PostgreSQL's DETAIL quotes the failing row).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import datetime, timezone
from typing import Any

from sync.core.errors import SyncError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The fields a delivery's log lines carry, in the order the text format shows them. Never the
#: record's id: it is a value from the delivery (a customer's key may be an email); the inbox id
#: finds the delivery, and its record, in /ops.
DELIVERY_FIELDS = ("inbox_id", "event_type", "fingerprint", "program")
#: Other structured fields our lines may carry.
EXTRA_FIELDS = ("job_id", "object", "count", "outcome", "reason")
_ALL_FIELDS = DELIVERY_FIELDS + EXTRA_FIELDS
#: An error text in a log line is cut here: a line stays one readable line.
MAX_MESSAGE = 4000


def delivery_fields(inbox_id: int | None, event_type: str | None, fingerprint: str | None = None,
                    program: str | None = None) -> dict[str, Any]:
    """The ``extra=`` of a log line about one delivery (of ``program``)."""
    return {"inbox_id": inbox_id, "event_type": event_type, "fingerprint": fingerprint, "program": program}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's known fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _bounded(record.getMessage()),
        }
        for name in _ALL_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = _bounded(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return withheld_traceback(ei[1])


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [inbox #12 partner.created fp=3f2a9c1e]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _bounded(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return withheld_traceback(ei[1])

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = None  # not another handler's formatting of it, which may carry its text
        line = super().format(record)
        tags = []
        if getattr(record, "inbox_id", None) is not None:
            tags.append(f"inbox #{record.inbox_id}")
        for name in ("event_type", "object"):
            if getattr(record, name, None) is not None:
                tags.append(str(getattr(record, name)))
        if getattr(record, "fingerprint", None):
            tags.append(f"fp={record.fingerprint[:12]}")
        if not tags:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the tagged line
        return f"{head} [{' '.join(tags)}]{newline}{rest}"


def withheld_traceback(exc: BaseException | None) -> str:
    """``exc``'s traceback as Python prints it, each error's text withheld unless it is ours."""
    if exc is None:
        return ""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts = []
    for error in reversed(chain):
        if parts:
            parts.append("\nThe above exception led to the following:\n\n")
        if error.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(error.__traceback__))
        name = f"{type(error).__module__}.{type(error).__qualname__}"
        text = str(error) if isinstance(error, SyncError) else "(its text is withheld: it may quote a value)"
        parts.append(f"{name}: {text}\n")
    return "".join(parts).rstrip("\n")


def formatter(log_format: str | None) -> logging.Formatter:
    return JsonFormatter() if resolve(log_format) == "json" else TextFormatter()


def resolve(log_format: str | None) -> str:
    """The format to use: as configured, else JSON unless standard output is a terminal."""
    if log_format:
        return log_format
    try:
        return "text" if sys.stdout.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(level: str = "INFO", log_format: str | None = None) -> None:
    """Log to stderr at ``level`` in ``log_format``, unless the host (gunicorn with our
    ``logconfig_dict``, pytest) already set up the root logger's handlers."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
        root.setLevel(level)
    for name in ("sync", "app", "rq"):
        logging.getLogger(name).setLevel(level)
    # Alembic says which plugins it loaded every time it migrates: noise, not news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def gunicorn_logconfig(level: str = "INFO", log_format: str | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig``: gunicorn's lines and ours through one handler, in one format."""
    factory = JsonFormatter if resolve(log_format) == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": factory}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "default",
                                 "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + f"… ({len(text) - MAX_MESSAGE} more characters)"
