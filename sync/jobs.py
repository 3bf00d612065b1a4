"""What RQ runs, and the one place where an error's kind becomes "retry later" or "fail".

A job names an inbox row. It records every attempt and its outcome on the row, so the inbox,
not Redis, says what became of each delivery.
"""

from __future__ import annotations

import logging
import random

from rq import Retry, get_current_job

from sync import services
from sync.envelope import MalformedDelivery
from sync.errors import PermanentError, TransientError
from sync.inbox import IGNORED, PROCESSED

log = logging.getLogger(__name__)

#: Seconds to wait before each retry of a transient failure; about four hours in all, so an
#: outage of an hour drains by itself afterwards.
RETRY_DELAYS = (10, 30, 90, 300, 900, 1800, 3600, 3600, 3600)
#: Attempts after which a row is given up even if each failure looked transient (a delivery that
#: kills its work horse never reaches the retry logic, and the sweeper would bring it back forever).
MAX_ATTEMPTS = 3 * len(RETRY_DELAYS)


def process_event(event_id: int) -> Retry | str:
    """Process inbox row ``event_id``; the RQ job for every stored delivery."""
    current = services.current()
    try:
        event = current.inbox.begin_attempt(event_id)
        if event.status in (PROCESSED, IGNORED):
            return f"already {event.status}"
        if event.attempts > MAX_ATTEMPTS:
            raise PermanentError(f"gave up after {event.attempts - 1} attempts")
        status = current.processor.process(event)
    except TransientError as exc:
        return _retry_or_fail(event_id, exc)
    except (PermanentError, MalformedDelivery) as exc:
        _fail(event_id, str(exc))
        raise
    except Exception as exc:  # a bug: fail this delivery once, visibly, and keep the worker
        _fail(event_id, f"unexpected {type(exc).__name__}: {exc}")
        raise
    log.info("inbox #%s %s: %s", event_id, event.event_type, status)
    return status


def _retry_or_fail(event_id: int, exc: TransientError) -> Retry:
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    if retries >= len(RETRY_DELAYS):
        _fail(event_id, f"still failing after {retries} retries: {exc}")
        raise exc
    delay = backoff(retries)
    # RQ does not record why a job asked to be retried: say it here.
    log.warning(
        "inbox #%s: %s; retry %d of %d in %ds", event_id, exc, retries + 1, len(RETRY_DELAYS), delay
    )
    try:
        services.current().inbox.record_error(event_id, str(exc))
    except TransientError:
        pass  # the database is the thing that is away; the log line above has the reason
    return Retry(max=len(RETRY_DELAYS), interval=delay)


def backoff(retries: int) -> int:
    """Delay before retry number ``retries + 1``: exponential, with jitter of up to a fifth."""
    base = RETRY_DELAYS[min(retries, len(RETRY_DELAYS) - 1)]
    return base + random.randint(0, base // 5)


def _fail(event_id: int, reason: str) -> None:
    log.error("inbox #%s failed: %s", event_id, reason)
    try:
        services.current().inbox.mark_failed(event_id, reason)
    except TransientError:
        log.error("inbox #%s: could not record the failure; the sweeper will retry it", event_id)
