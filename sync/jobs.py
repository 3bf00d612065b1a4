"""What RQ runs, and the one place where an error's kind becomes "retry later" or "fail".

A job carries a batch of inbox rows (one row when deliveries arrive one at a time). Every
attempt and outcome is recorded on each row, so the inbox, not Redis, says what became of each
delivery; a job's description names its rows.
"""

from __future__ import annotations

import logging
import random

from rq import Retry, get_current_job

from sync import logs, queue, services
from sync.errors import PermanentError, TransientError
from sync.inbox import IGNORED, PROCESSED

log = logging.getLogger(__name__)

#: Seconds to wait before each retry of a transient failure; about four hours in all, so an
#: outage of an hour drains by itself afterwards.
RETRY_DELAYS = (10, 30, 90, 300, 900, 1800, 3600, 3600, 3600)
#: Attempts after which a row is given up even if each failure looked transient (a delivery that
#: kills its work horse never reaches the retry logic, and the sweeper would bring it back forever).
MAX_ATTEMPTS = 3 * len(RETRY_DELAYS)


def process_events(event_ids: list[int]) -> Retry | str:
    """Process the inbox rows ``event_ids``: the RQ job for stored deliveries."""
    current = services.current()
    try:
        events = current.inbox.begin_attempts(event_ids)
        missing = set(event_ids) - {e.id for e in events}
        if missing:
            log.warning("inbox rows %s do not exist; skipped", sorted(missing))
        todo = [e for e in events if e.status not in (PROCESSED, IGNORED)]
        given_up = {e.id: f"gave up after {e.attempts - 1} attempts" for e in todo if e.attempts > MAX_ATTEMPTS}
        current.inbox.mark_failures(given_up)
        result = current.processor.process_batch([e for e in todo if e.id not in given_up])
    except TransientError as exc:
        return _retry_or_fail(event_ids, exc)
    except Exception as exc:  # a bug: fail these deliveries once, visibly, and keep the worker
        _fail(event_ids, f"unexpected {type(exc).__name__}: {exc}")
        raise
    failed = {**given_up, **result.failed}
    by_id = {e.id: e for e in events}

    def fields(event_id: int) -> dict:
        e = by_id[event_id]
        return logs.delivery_fields(e.id, e.event_type, result.entity_ids.get(e.id, e.entity_id), e.fingerprint)

    for event_id in result.processed:
        log.info("delivery processed", extra=fields(event_id))
    for event_id in result.ignored:
        log.info("delivery ignored: no mapping handles its event type", extra=fields(event_id))
    for event_id, reason in sorted(failed.items()):
        log.error("delivery failed: %s", reason, extra=fields(event_id))
    summary = f"{len(result.processed)} processed, {len(result.ignored)} ignored, {len(failed)} failed"
    if result.processed and current.processor.outbox is not None:
        try:
            current.flushes.request()
        except TransientError as exc:  # the worker's housekeeping asks again
            log.warning("%s", exc)
    if failed:
        # The others are committed; this puts the job, with its reasons, in RQ's failed registry.
        raise PermanentError(summary + ": " + "; ".join(f"#{i}: {r}" for i, r in sorted(failed.items())))
    return summary


def _retry_or_fail(event_ids: list[int], exc: TransientError) -> Retry:
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    if retries >= len(RETRY_DELAYS):
        _fail(event_ids, f"still failing after {retries} retries: {exc}")
        raise exc
    delay = backoff(retries)
    # RQ does not record why a job asked to be retried: say it here.
    log.warning(
        "inbox %s: %s; retry %d of %d in %ds", _rows(event_ids), exc, retries + 1, len(RETRY_DELAYS), delay
    )
    try:
        services.current().inbox.record_errors(event_ids, str(exc))
    except TransientError:
        pass  # the database is the thing that is away; the log line above has the reason
    return Retry(max=len(RETRY_DELAYS), interval=delay)


def backoff(retries: int) -> int:
    """Delay before retry number ``retries + 1``: exponential, with jitter of up to a fifth."""
    base = RETRY_DELAYS[min(retries, len(RETRY_DELAYS) - 1)]
    return base + random.randint(0, base // 5)


def _fail(event_ids: list[int], reason: str) -> None:
    log.error("inbox %s failed: %s", _rows(event_ids), reason)
    try:
        services.current().inbox.mark_failures({i: reason for i in event_ids})
    except TransientError:
        log.error("inbox %s: could not record the failure; the sweeper will retry", _rows(event_ids))


def _rows(event_ids: list[int]) -> str:
    return "#" + ", #".join(str(i) for i in event_ids[:10]) + (" …" if len(event_ids) > 10 else "")


def flush_crm() -> str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush (see ``sync.flushing``)."""
    outcome = services.current().flushes.run_job(should_stop=queue.stop_requested)
    log.info("Salesforce flush: %s", outcome.text)
    return outcome.text
