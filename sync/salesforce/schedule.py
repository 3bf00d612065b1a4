"""The flush protocol, in one place: when a Salesforce flush runs, and that one runs at a time.

* **Asking.** Anything that changed the outbox calls ``request()``: at most one flush job waits on
  the CRM queue at a time (a Redis key marks it), and a flush asked for while one runs leaves it a
  note to make one more pass. Batch work (a backfill, ``reconcile --fix``) asks for its flush
  ``backoff.GATHER_SECONDS`` out, so its records gather in the outbox and go to Salesforce in
  large Bulk API jobs rather than a call per 200; a finished backfill asks for one at once.
* **Running.** A flush job holds a short Redis lock (``LOCK_SECONDS``), renewed after every call, so
  a flush killed mid-way holds up the next one for seconds. It works for at most
  ``SLICE_SECONDS``, then hands over to a fresh job, so deliveries (whose queue a worker serves
  first) never wait long behind it; on SIGTERM it stops between calls.
* **Failing.** When Salesforce cannot be reached (an outage, an API limit), the next try comes
  after 5 s, 10 s, 20 s, 40 s, then every 50-60 s: quick to notice that it is back, never more
  than about one probe call a minute while it is not. A refusal of every call (a session or login
  that cannot be renewed) is noted for ``/healthz`` and ``status`` and holds flushes back for an
  hour or more (``crm-retry`` and ``crm-flush`` go ahead at once).
* **The API budget.** The org's daily API allowance is shared with its other integrations. Before
  a flush's every call, the org's usage (``SalesforceClient.usage``, from the latest answer) is
  compared with SALESFORCE_API_BUDGET; at or past it, the flush stops between calls: not a failure,
  the records wait. Flushes are then paused (noted for ``status``, ``/healthz``, ``/ops`` and
  ``/metrics``) and the next flush comes after a probe interval (``backoff.BUDGET_PROBE_DELAYS``):
  it first reads the usage (``GET limits``, one call) and goes ahead only under the budget. At
  most one such look per interval, whichever process takes it. ``crm-flush --force`` ignores the budget.

* **Bulk jobs.** While a Bulk API 2.0 job runs (``sync.salesforce.bulk_flush``), a flush ends
  after looking at it and asks for the next one when the job is due its next look.

``crm-flush`` runs the same loop in the foreground, under the same lock, and waits for the bulk
jobs it finds running, showing their state as its progress.
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
from sync.salesforce.client import ApiUsage
from sync.salesforce.flush import Flusher
from sync.salesforce.report import FlushReport
from sync.settings import ApiBudget

log = logging.getLogger(__name__)

REQUESTED = "partnero-sync:crm-flush:requested"
LOCK = "partnero-sync:crm-flush:lock"
AGAIN = "partnero-sync:crm-flush:again"
FAILURES = "partnero-sync:crm-flush:failures"  # flushes in a row that could not reach Salesforce
REFUSALS = "partnero-sync:crm-flush:refusals"  # flushes in a row that Salesforce refused outright
PROBLEM = "partnero-sync:crm-flush:problem"
#: The org's API usage as last read: {"used", "allowance", "budget", "read_at"} (budget: in calls).
USAGE = "partnero-sync:crm-flush:api-usage"
#: Flushes paused at the API budget: {"used", "allowance", "budget", "since"}.
PAUSED = "partnero-sync:crm-flush:paused"
#: Set while the usage was read lately (a probe, or the pause itself): no other probe until it expires.
PROBED = "partnero-sync:crm-flush:budget-probe"
#: How long a flush's lock outlives the flush that took it, if that one dies.
LOCK_SECONDS = 30
#: How long one flush job works before it hands over to a fresh one.
SLICE_SECONDS = 20
#: A request older than this is forgotten (its job was lost): the next one goes ahead.
REQUEST_TTL = 600
#: The stored usage is forgotten after two days without a reading.
USAGE_TTL = 2 * 24 * 3600
#: What a flush stopped at the API budget says (``FlushReport.stopped``).
PAUSED_TEXT = "paused at the Salesforce API budget"


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

    def __init__(self, jobs: FlushQueue, flusher: Flusher | None, clock: Clock = system_clock,
                 budget: ApiBudget = ApiBudget()):
        self.jobs = jobs
        self.redis = jobs.connection
        self.flusher = flusher
        #: What time it is: when a problem began (``problem()["since"]``).
        self.clock = clock
        #: How much of the org's daily API allowance flushes may use (SALESFORCE_API_BUDGET).
        self.budget = budget
        self._stored_usage: ApiUsage | None = None

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
        try:
            pause, looked = self._budget_pause()
        except TransientError as exc:
            _release(lock)
            return FlushOutcome(FlushReport(), self._unreachable(exc))
        if pause is not None:
            _release(lock)
            return FlushOutcome(FlushReport(), self._pause(pause) if looked else
                                "paused at the Salesforce API budget; the next look is on its way")
        return self._run_locked(lock, should_stop)

    def _run_locked(self, lock, should_stop: Callable[[], bool]) -> FlushOutcome:
        """``run_job`` with the lock taken: flush passes while notes ask for more, for one slice."""
        deadline = time.monotonic() + SLICE_SECONDS
        total = FlushReport()
        while True:
            self.redis.delete(AGAIN)
            try:
                report, pause = self._flush_locked(lock, lambda: should_stop() or time.monotonic() > deadline)
            except TransientError as exc:
                _release(lock)
                pause = self._over_budget(self.flusher.client.usage)  # the org's limit reached: a pause too
                return FlushOutcome(total, self._pause(pause) if pause else self._unreachable(exc))
            total.add(report)
            # Let go first, then look at the notes: a note left after this look finds the lock
            # free, and its own job sends.
            _release(lock)
            if report.stopped or not self.redis.exists(AGAIN) or not lock.acquire():
                break
        if total.org_refusal is not None:
            return FlushOutcome(total, self._refused_everything(total))
        self._clear_trouble(total)
        if pause is not None:
            return FlushOutcome(total, f"{total.summary()}; {self._pause(pause)}")
        if total.stopped:
            # Time is up, or the worker is stopping: a fresh job carries on.
            self.request(force=True)
            return FlushOutcome(total, f"{total.summary()}; continued by a fresh job")
        if total.bulk_wait is not None:
            return FlushOutcome(total, self._bulk_running(total))
        return FlushOutcome(total, total.summary())

    def run_foreground(self, on_progress: Callable[[FlushReport], None] | None = None,
                       wait_seconds: float = 60, *, force: bool = False) -> FlushReport:
        """``crm-flush``: everything due, now, in this process, under the workers' lock. While
        flushes are paused at the API budget it sends nothing (``report.stopped`` says so, and
        ``paused()`` why), unless ``force``: then the budget is not looked at."""
        lock = self.redis.lock(LOCK, timeout=LOCK_SECONDS, blocking=True, blocking_timeout=wait_seconds)
        if not lock.acquire():
            raise TransientError(f"a worker's flush held the lock for more than {wait_seconds:.0f} s; "
                                 "it is sending the outbox: try again later")
        try:
            pause, looked = (None, False) if force else self._budget_pause()
            if pause is None:
                report, pause = self._flush_locked(lock, lambda: False, on_progress, budget=not force)
                looked = True
                if pause is None:
                    pause = self._wait_for_bulk_jobs(lock, report, on_progress, budget=not force)
            else:
                report = FlushReport(stopped=PAUSED_TEXT)
        finally:
            _release(lock)
        if report.org_refusal is None:
            self._clear_trouble(report)
        if pause is not None and looked:  # else the pause's next look is scheduled already
            self._pause(pause)
        return report

    def _wait_for_bulk_jobs(self, lock, report: FlushReport, on_progress: Callable[[FlushReport], None] | None,
                            budget: bool) -> dict | None:
        """``crm-flush``: while a bulk job runs, wait for its next look (holding the lock), then
        flush again, adding up into ``report``; the pause it stopped at, if any."""
        while report.bulk_wait is not None and report.org_refusal is None and not report.stopped:
            if on_progress is not None:
                on_progress(report)
            if not _hold(lock, report.bulk_wait):
                report.stopped = "a worker's flush took over"
                return None
            again, pause = self._flush_locked(lock, lambda: False, on_progress, budget=budget)
            report.add(again)
            if pause is not None:
                return pause
        return None

    def _flush_locked(self, lock, should_stop: Callable[[], bool],
                      on_progress: Callable[[FlushReport], None] | None = None,
                      budget: bool = True) -> tuple[FlushReport, dict | None]:
        """One flush under ``lock``; with the pause it stopped at (``budget``: before every call,
        the org's usage is held against the budget), if it did."""
        pause: dict | None = None

        def renewed() -> bool:
            nonlocal pause
            try:
                lock.extend(LOCK_SECONDS, replace_ttl=True)
            except redis.exceptions.LockError:  # it expired and another flush took over
                return True
            self._note_usage()
            pause = self._over_budget(self.flusher.client.usage) if budget else None
            return pause is not None or should_stop()

        try:
            report = self.flusher.flush(should_stop=renewed, on_progress=on_progress)
        finally:
            self._note_usage()
        if pause is not None:
            report.stopped = PAUSED_TEXT
        return report, pause

    # -- the API budget ----------------------------------------------------------------------

    def _over_budget(self, usage: ApiUsage | None) -> dict | None:
        """The pause ``usage`` calls for ({"used", "allowance", "budget"}), or None: under the
        budget, or not known yet."""
        if usage is None:
            return None
        limit = self.budget.limit(usage.allowance)
        return {"used": usage.used, "allowance": usage.allowance, "budget": limit} if usage.used >= limit else None

    def _budget_pause(self) -> tuple[dict | None, bool]:
        """Before a flush: (the pause it must keep, whether the usage was read for it). Nothing
        while flushes are not paused; else the usage is read (``GET limits``, one call), at most
        once per probe interval, and a usage under the budget ends the pause."""
        paused = self.paused()
        if paused is None:
            return None, False
        if not self.redis.set(PROBED, "1", nx=True, ex=_probe_hold(backoff.BUDGET_PROBE_DELAYS[0])):
            return paused, False  # looked lately: the next look is scheduled
        try:
            usage = self.flusher.client.read_limits()
        except TransientError:
            self.redis.delete(PROBED)  # no look was had: the retry after the failure's backoff takes one
            raise
        self._note_usage()
        pause = self._over_budget(usage)
        if pause is None:
            self.redis.delete(PAUSED)
            log.info("Salesforce flush: the org's API usage (%d of %d) is under the budget again; flushes resume",
                     usage.used, usage.allowance)
        return pause, True

    def _pause(self, pause: dict) -> str:
        """Note the pause (since when it began) and schedule the next look; a sentence for the log."""
        delay = backoff.delay(backoff.BUDGET_PROBE_DELAYS, 0)
        since = (self.paused() or {}).get("since")
        state = {**pause, "since": since or self.clock().isoformat(timespec="seconds")}
        self.redis.set(PAUSED, json.dumps(state), ex=USAGE_TTL)  # each look renews it
        self.redis.set(PROBED, "1", ex=_probe_hold(delay))
        self.request(delay, force=True)
        text = (f"{PAUSED_TEXT}: the org has used {pause['used']:,} of its {pause['allowance']:,} daily API requests, "
                f"at or past this service's budget of {pause['budget']:,} (SALESFORCE_API_BUDGET); the records wait, "
                f"next look in {delay / 60:.0f} min")
        (log.info if since else log.warning)("Salesforce flush: %s", text)
        return text

    def _note_usage(self) -> None:
        """Keep the client's latest reading of the org's usage in Redis (``status`` and
        ``/metrics`` run in other processes), with the budget it comes to."""
        usage = self.flusher.client.usage
        if usage is None or usage == self._stored_usage:
            return
        record = {**usage.as_dict(), "budget": self.budget.limit(usage.allowance)}
        self.redis.set(USAGE, json.dumps(record), ex=USAGE_TTL)
        self._stored_usage = usage

    def paused(self) -> dict | None:
        """Whether flushes are paused at the API budget: {"used", "allowance", "budget", "since"}."""
        return self._read(PAUSED)

    def usage(self) -> dict | None:
        """The org's API usage as last read: {"used", "allowance", "budget", "read_at"}."""
        return self._read(USAGE)

    def _read(self, key: str) -> dict | None:
        try:
            raw = self.redis.get(key)
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None

    def _bulk_running(self, report: FlushReport) -> str:
        """A bulk job runs: the next flush looks at it when its time comes (``BULK_POLL_DELAYS``)."""
        self.request(report.bulk_wait, force=True)
        return f"{report.summary()}; next look in {report.bulk_wait:.0f} s"

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
        return self._read(PROBLEM)

    def forget_problem(self) -> None:
        """After a fix (``crm-retry``): the next flush goes ahead and tells again if it still fails."""
        self.redis.delete(PROBLEM, FAILURES, REFUSALS)


def _hold(lock, seconds: float) -> bool:
    """Wait ``seconds`` holding ``lock`` (renewed as it goes); False when it was lost meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            lock.extend(LOCK_SECONDS, replace_ttl=True)
        except redis.exceptions.LockError:  # it expired and a worker's flush took over
            return False
        time.sleep(min(left, LOCK_SECONDS / 3))
    return True
def _probe_hold(delay: float) -> int:
    """How long a look at the usage holds off the next: a little less than ``delay``, so the job
    scheduled after it finds the way clear."""
    return max(1, int(delay) - 1)


def _release(lock) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:  # it expired: nothing to release
        pass
