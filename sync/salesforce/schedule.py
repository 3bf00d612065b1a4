"""The flush protocol, in one place: when a Salesforce flush runs, and that one runs at a time.

* **Asking.** Anything that changed the outbox calls ``request()``: at most one flush job waits on
  the CRM queue at a time (a Redis key marks it), and a flush asked for while one runs leaves it a
  note to make one more pass. Batch work (a backfill, ``reconcile --fix``) asks for its flush
  ``GATHER_SECONDS`` out, so its records gather in the outbox and go to Salesforce in large Bulk
  API jobs rather than a call per 200; a finished backfill asks for one at once.
* **Running.** A flush job holds a short Redis lock (``LOCK_SECONDS``), renewed after every call, so
  a flush killed mid-way holds up the next one for seconds. It works for at most
  ``SLICE_SECONDS``, then hands over to a fresh job, so deliveries (whose queue a worker serves
  first) never wait long behind it; on SIGTERM it stops between calls.
* **Failing.** When Salesforce cannot be reached (an outage, an API limit), the next try comes
  after 5 s, 10 s, 20 s, 40 s, then every 50-60 s: quick to notice that it is back, never more
  than about one probe call a minute while it is not. A refusal of every call (a session or login
  that cannot be renewed) is noted for ``/healthz`` and ``status`` and holds flushes back for an
  hour or more (``crm-retry`` and ``crm-flush`` go ahead at once).

``crm-flush`` runs the same loop in the foreground, under the same lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from sync.core import backoff
from sync.core.clock import Clock, system_clock
from sync.core.errors import TransientError
from sync.salesforce.flush import Flusher, FlushReport

log = logging.getLogger(__name__)

REQUESTED = "partnero-sync:crm-flush:requested"
LOCK = "partnero-sync:crm-flush:lock"
AGAIN = "partnero-sync:crm-flush:again"
FAILURES = "partnero-sync:crm-flush:failures"  # flushes in a row that could not reach Salesforce
REFUSALS = "partnero-sync:crm-flush:refusals"  # flushes in a row that Salesforce refused outright
PROBLEM = "partnero-sync:crm-flush:problem"
#: How long a flush's lock outlives the flush that took it, if that one dies.
LOCK_SECONDS = 30
#: How long one flush job works before it hands over to a fresh one.
SLICE_SECONDS = 20
#: A request older than this is forgotten (its job was lost): the next one goes ahead.
REQUEST_TTL = 600
#: How long records applied by batch work (a backfill, ``reconcile --fix``) gather before the
#: flush that sends them: requests made meanwhile are that flush's.
GATHER_SECONDS = 60


@dataclass(frozen=True)
class FlushOutcome:
    """What one flush job came to, for its RQ result and the log."""

    report: FlushReport
    text: str


class FlushQueue(Protocol):
    """What the flush asks of the job queue (``sync.worker.queues.JobQueue``): its Redis, for the
    flush's marks and lock, and a flush job, now or after ``delay`` seconds."""

    connection: redis.Redis

    def enqueue_flush(self, delay: float | None = None) -> str: ...


class FlushSchedule:
    """When Salesforce flushes run: asked for (``request``), run one slice at a time under a lock
    (``run_job``, ``run_foreground``), held back after failures, with the problem kept for ``status``."""

    def __init__(self, jobs: FlushQueue, flusher: Flusher | None, clock: Clock = system_clock):
        self.jobs = jobs
        self.redis = jobs.connection
        self.flusher = flusher
        #: What time it is: when a problem began (``problem()["since"]``).
        self.clock = clock

    # -- asking ----------------------------------------------------------------------------

    def request(self, delay: float | None = None, *, force: bool = False) -> bool:
        """Make sure a flush is on its way; True when this call enqueued one.

        ``force`` goes ahead even while flushes are held back (after a fix: ``crm-retry``).
        """
        if self.flusher is None:
            return False
        hold = max(REQUEST_TTL, int(delay or 0) + 60)
        try:
            if force:
                self.redis.set(REQUESTED, "1", ex=hold)
            elif not self.redis.set(REQUESTED, "1", nx=True, ex=hold):
                if not delay:
                    self.redis.set(AGAIN, "1", ex=REQUEST_TTL)  # one may be running: one more pass
                return False
        except redis.RedisError as exc:
            raise TransientError(f"could not ask for a Salesforce flush: {exc}") from exc
        self.jobs.enqueue_flush(delay)
        return True

    # -- running -----------------------------------------------------------------------------

    def run_job(self, should_stop: Callable[[], bool] = lambda: False) -> FlushOutcome:
        """The body of a flush job: one slice of flushing under the lock, then hand over."""
        if self.flusher is None:
            return FlushOutcome(FlushReport(), "Salesforce sync is off")
        self.redis.delete(REQUESTED)  # changes from now on ask for the next flush
        lock = self.redis.lock(LOCK, timeout=LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            # A note for the running flush, then one more try: it may have let go just now, after
            # its last look at the notes, and then this job is the one to send.
            self.redis.set(AGAIN, "1", ex=REQUEST_TTL)
            if not lock.acquire():
                return FlushOutcome(FlushReport(), "another flush is running; it will send these too")
        deadline = time.monotonic() + SLICE_SECONDS
        total = FlushReport()
        while True:
            self.redis.delete(AGAIN)
            try:
                report = self._flush_locked(lock, lambda: should_stop() or time.monotonic() > deadline)
            except TransientError as exc:
                _release(lock)
                return FlushOutcome(total, self._unreachable(exc))
            total.add(report)
            # Let go first, then look at the notes: a note left after this look finds the lock
            # free, and its own job sends.
            _release(lock)
            if report.stopped or not self.redis.exists(AGAIN) or not lock.acquire():
                break
        if total.org_refusal is not None:
            return FlushOutcome(total, self._refused_everything(total))
        self._clear_trouble(total)
        if total.stopped:
            # Time is up, or the worker is stopping: a fresh job carries on.
            self.request(force=True)
            return FlushOutcome(total, f"{total.summary()}; continued by a fresh job")
        return FlushOutcome(total, total.summary())

    def run_foreground(self, on_progress: Callable[[FlushReport], None] | None = None,
                       wait_seconds: float = 60) -> FlushReport:
        """``crm-flush``: everything due, now, in this process, under the workers' lock."""
        lock = self.redis.lock(LOCK, timeout=LOCK_SECONDS, blocking=True, blocking_timeout=wait_seconds)
        if not lock.acquire():
            raise TransientError(f"a worker's flush held the lock for more than {wait_seconds:.0f} s; "
                                 "it is sending the outbox: try again later")
        try:
            report = self._flush_locked(lock, lambda: False, on_progress)
        finally:
            _release(lock)
        if report.org_refusal is None:
            self._clear_trouble(report)
        return report

    def _flush_locked(self, lock, should_stop: Callable[[], bool],
                      on_progress: Callable[[FlushReport], None] | None = None) -> FlushReport:
        def renewed() -> bool:
            try:
                lock.extend(LOCK_SECONDS, replace_ttl=True)
            except redis.exceptions.LockError:  # it expired and another flush took over
                return True
            return should_stop()

        return self.flusher.flush(should_stop=renewed, on_progress=on_progress)

    # -- failing ---------------------------------------------------------------------------------

    def _unreachable(self, exc: TransientError) -> str:
        failures = self.redis.incr(FAILURES)
        self.redis.expire(FAILURES, 24 * 3600)
        delay = backoff.delay(backoff.FLUSH_DELAYS, failures - 1)
        self.request(delay, force=True)
        text = f"could not flush ({exc}); the records wait in the outbox, next try in {delay:.0f} s"
        log.warning("Salesforce flush: %s", text)
        return text

    def _refused_everything(self, report: FlushReport) -> str:
        refusal = report.org_refusal
        refusals = self.redis.incr(REFUSALS)
        self.redis.expire(REFUSALS, 7 * 24 * 3600)
        delay = backoff.delay(backoff.REFUSAL_DELAYS, refusals - 1)
        since = self.clock().isoformat(timespec="seconds")
        problem = {"code": refusal.code, "message": refusal.message, "since": since}
        self.redis.set(PROBLEM, json.dumps(problem))
        self.request(delay, force=True)
        text = f"{refusal.message}; flushes hold back {delay / 60:.0f} min (crm-retry goes ahead at once)"
        log.error("Salesforce flush: %s", text)
        return text

    def _clear_trouble(self, report: FlushReport) -> None:
        if report.calls:
            self.redis.delete(FAILURES, REFUSALS, PROBLEM)

    def problem(self) -> dict | None:
        """What stops every Salesforce call now, if anything: {"code", "message", "since"}."""
        try:
            raw = self.redis.get(PROBLEM)
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None

    def forget_problem(self) -> None:
        """After a fix (``crm-retry``): the next flush goes ahead and tells again if it still fails."""
        self.redis.delete(PROBLEM, FAILURES, REFUSALS)


def _release(lock) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:  # it expired: nothing to release
        pass
