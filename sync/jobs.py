"""What RQ runs, and the one place where an error's kind becomes "retry later" or "fail".

A job carries a batch of inbox rows (one row when deliveries arrive one at a time). Every
attempt and outcome is recorded on each row, so the inbox, not Redis, says what became of each
delivery; a job's description names its rows.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone

from rq import Retry, get_current_job

from sync import logs, metrics, services
from sync.crm.flush import FlushReport
from sync.errors import PermanentError, TransientError
from sync.inbox import FAILED, IGNORED, PROCESSED

log = logging.getLogger(__name__)

#: Seconds to wait before each retry of a transient failure; about four hours in all, so an
#: outage of an hour drains by itself afterwards.
RETRY_DELAYS = (10, 30, 90, 300, 900, 1800, 3600, 3600, 3600)
#: Attempts after which a row is given up even if each failure looked transient (a delivery that
#: kills its work horse never reaches the retry logic, and the sweeper would bring it back forever).
MAX_ATTEMPTS = 3 * len(RETRY_DELAYS)
#: A flush job hands over to a fresh one after this long, so no job runs into RQ's time-out.
MAX_FLUSH_SECONDS = 600


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
    committed_at = datetime.now(timezone.utc)
    metrics.LAG.observe((committed_at - by_id[i].received_at).total_seconds() for i in result.processed)
    for outcome, done in ((PROCESSED, result.processed), (IGNORED, result.ignored), (FAILED, failed)):
        metrics.ATTEMPTS.inc(len(done), outcome=outcome)

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
    if result.processed:
        current.request_flush()
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
    metrics.ATTEMPTS.inc(len(event_ids), outcome=metrics.RETRIED)
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
    metrics.ATTEMPTS.inc(len(event_ids), outcome=FAILED)
    try:
        services.current().inbox.mark_failures({i: reason for i in event_ids})
    except TransientError:
        log.error("inbox %s: could not record the failure; the sweeper will retry", _rows(event_ids))


def _rows(event_ids: list[int]) -> str:
    return "#" + ", #".join(str(i) for i in event_ids[:10]) + (" …" if len(event_ids) > 10 else "")


def flush_crm() -> Retry | str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush.

    One flush at a time talks to Salesforce. A flush asked for while another runs leaves it a
    note to make one more pass, so nothing committed meanwhile waits for the next interval.
    """
    current = services.current()
    flusher = current.flusher()
    if flusher is None:
        return "Salesforce sync is off"
    current.jobs.flush_started()
    jobs = current.jobs
    total = FlushReport()
    started = time.monotonic()
    while True:
        lock = jobs.flush_lock()
        if not lock.acquire():
            jobs.flag_flush_again()
            if not lock.acquire():  # still running: it will see the note when it finishes
                return "another flush is running; it will send these too"
        try:
            while time.monotonic() - started < MAX_FLUSH_SECONDS:
                report = flusher.flush()
                total.add(report)
                if report.calls == 0:
                    break
            else:
                jobs.request_flush()  # a long backlog: hand over to a fresh job
        except TransientError as exc:
            return _retry_flush(exc)
        finally:
            _release(lock)
        if not jobs.take_flush_again():
            break
    log.info("Salesforce flush: %s", total.summary())
    return total.summary()


def _release(lock) -> None:
    try:
        lock.release()
    except Exception:  # it expired: nothing to release
        pass


def _retry_flush(exc: TransientError) -> Retry:
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    delay = backoff(min(retries, len(RETRY_DELAYS) - 1))
    log.warning("Salesforce flush: %s; retry in %ds (the records wait in the outbox)", exc, delay)
    # This retry is the flush on its way: no other is needed until it runs.
    services.current().jobs.hold_flush_request(delay + 60)
    return Retry(max=10_000, interval=delay)
