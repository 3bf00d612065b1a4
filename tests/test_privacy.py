"""What leaves a job or a log line of an error: its type and our own words, never the text of an
error that may quote a delivery (a database's, a library's), also not through the chain of errors
Python prints."""

from __future__ import annotations

import logging
import sys

import pytest
from rq import Queue, SimpleWorker

from sync.core.errors import TransientError
from sync.ops import logs
from sync.worker import jobs

MARKER = "zq7-private-value"


@jobs._withholding
def passing_after_a_leaky_error() -> None:
    """A job for the tests below: our error, raised from (and while handling) one quoting a value."""
    try:
        raise ValueError(f"Failing row contains ({MARKER})")
    except ValueError as exc:
        raise TransientError("database unavailable: deadlock (SQLSTATE 40P01)") from exc


@jobs._withholding
def broken_by_a_leaky_error() -> None:
    raise KeyError(MARKER)


@pytest.mark.parametrize(("job", "says"), [
    (passing_after_a_leaky_error, "sync.core.errors.TransientError: database unavailable: deadlock (SQLSTATE 40P01)"),
    (broken_by_a_leaky_error, "RuntimeError: broken_by_a_leaky_error failed: builtins.KeyError (its text is "
                              "withheld: it may quote a delivery's values)"),
], ids=["ours", "another"])
def test_rqs_failed_registry_gets_no_text_but_ours(job, says, redis_conn):
    queued = Queue("privacy", connection=redis_conn).enqueue(job)
    SimpleWorker(["privacy"], connection=redis_conn).work(burst=True)
    exc_string = queued.latest_result().exc_string
    assert says in exc_string and "Traceback" in exc_string
    assert MARKER not in exc_string and "direct cause" not in exc_string


def test_a_logged_traceback_withholds_the_text_of_errors_not_ours():
    try:
        passing_after_a_leaky_error.__wrapped__()
    except TransientError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("sync.test", logging.ERROR, __file__, 1, "it failed", None, exc_info)
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        record.exc_text = "a text another handler cached: " + MARKER
        line = formatter.format(record)
        assert MARKER not in line
        assert "builtins.ValueError: (its text is withheld: it may quote a value)" in line
        assert "sync.core.errors.TransientError: database unavailable: deadlock (SQLSTATE 40P01)" in line
        assert "passing_after_a_leaky_error" in line  # where it was raised: the frames stay
