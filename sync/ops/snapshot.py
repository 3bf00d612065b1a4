"""What the service is doing, read from the database and Redis at the moment of asking.

One snapshot serves ``partnero-sync status``, the operator's ``/healthz``, ``/metrics`` and
``/ops``, so they never disagree. Each source is read on its own: with Redis down, the inbox still reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sync.core.errors import TransientError
from sync.ops.progress import duration
from sync.store import db, ledger, runs
from sync.store.inbox import DeliveryStatus, InboxSummary
from sync.store import bulk_jobs
from sync.store.bulk_jobs import BulkJob
from sync.store.org_checks import OrgCheck, OrgChecks, Verdict
from sync.store.outbox import Outbox, OutboxStatus

#: A pending delivery older than this means the backlog is stuck (no worker, or one that fails).
STUCK_AFTER = timedelta(minutes=15)
#: How many of a misfit's findings "needs attention" names (``partnero-sync crm check`` lists all).
FIRST_FINDINGS = 3


@dataclass(frozen=True)
class QueueCounts:
    """What the job queue holds at the moment of asking (``sync.worker.queues.JobQueue.counts``
    reads it from RQ)."""

    queued: int  # waiting for a worker
    scheduled: int  # retries waiting for their time
    failed: int  # jobs in RQ's failed registry
    started: int  # running now, on a living worker
    workers: int  # living workers listening on the queue


class Health(StrEnum):
    """What a snapshot says of the service as a whole (``Snapshot.state``)."""

    OK = "ok"
    ATTENTION = "attention"
    UNKNOWN = "unknown"


@dataclass
class Snapshot:
    """What the service is doing at ``taken_at``: each source's figures, or why it could not be read."""

    taken_at: datetime
    #: How long the oldest pending delivery may wait before the backlog counts as stuck.
    stuck_after: timedelta = STUCK_AFTER
    inbox: InboxSummary | None = None
    queue: QueueCounts | None = None
    crm_enabled: bool = False
    #: Salesforce records by object and outbox status (pending, waiting, synced, failed).
    crm: dict[str, dict[str, int]] = field(default_factory=dict)
    crm_last_synced_at: datetime | None = None
    #: What stops every Salesforce call, when something does: {"code", "message", "since"}.
    crm_problem: dict | None = None
    #: The org's API usage as last read: {"used", "allowance", "budget", "read_at"} (budget in calls).
    crm_api_usage: dict | None = None
    #: Flushes paused at the API budget (not a failure: the records wait): {"used", "allowance",
    #: "budget", "since"}.
    crm_paused: dict | None = None
    #: The latest check of the org against the mappings (``sync.store.org_checks``), if one ran.
    org_check: OrgCheck | None = None
    #: The Bulk API 2.0 jobs running now (``sync.store.bulk_jobs``), oldest first.
    bulk_jobs: list[BulkJob] = field(default_factory=list)
    #: The ledger's currencies (read only when asked: it adds up the whole ledger).
    ledger: ledger.Summary | None = None
    #: The latest backfill (``partnero-sync backfill``), if any ran.
    backfill: runs.Run | None = None
    #: What could not be read, and why: {"database": "...", "redis": "..."}.
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest delivery still pending arrived (None: nothing pending)."""
        if self.inbox is None or self.inbox.oldest_pending_at is None:
            return None
        return max(0.0, (self.taken_at - self.inbox.oldest_pending_at).total_seconds())

    @property
    def crm_backlog(self) -> int:
        """Salesforce records waiting to be sent (pending or waiting for a parent)."""
        return sum(backlog(s) for s in self.crm.values())

    @property
    def crm_refused(self) -> int:
        return sum(s.get(OutboxStatus.FAILED, 0) for s in self.crm.values())

    @property
    def org_misfits(self) -> int:
        """How many problems the latest check found in the org (0: it fits, or no check could tell)."""
        check = self.org_check
        return len(check.findings) if self.crm_enabled and check and check.verdict is Verdict.MISFIT else 0

    @property
    def state(self) -> Health:
        """UNKNOWN when a source could not be read, else ATTENTION when something needs a person, else OK."""
        if self.unavailable:
            return Health.UNKNOWN
        return Health.ATTENTION if self.attention() else Health.OK

    def attention(self) -> list[str]:
        """What a person should look at, one sentence each; empty when all is well."""
        reasons = []
        if self.inbox is not None:
            failed = self.inbox.counts.get(DeliveryStatus.FAILED, 0)
            if failed:
                reasons.append(f"{failed} deliveries failed: see `partnero-sync status` and /ops, "
                               "then `partnero-sync requeue-failed` after a fix")
            age = self.oldest_pending_age
            if age is not None and age > self.stuck_after.total_seconds():
                reasons.append(f"the oldest pending delivery has waited {duration(age)}: is a worker running?")
        if self.queue is not None:
            if self.queue.failed:
                reasons.append(f"{self.queue.failed} jobs are in RQ's failed registry")
            if (self.queue.queued or self.queue.scheduled) and not self.queue.workers:
                reasons.append(f"{self.queue.queued} jobs wait and no worker listens on the queue")
        if self.crm_problem:
            reasons.append(f"Salesforce refuses every call: {self.crm_problem['message']}")
        if self.org_misfits:
            reasons.append(org_misfit(self.org_check))
        reasons += backfill_attention(self.backfill, self.taken_at)
        if self.crm_refused:
            reasons.append(f"Salesforce refused {self.crm_refused} records: see `partnero-sync crm-errors`")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for ``status --json``."""
        inbox = None
        if self.inbox is not None:
            inbox = {
                "by_status": self.inbox.counts,
                "oldest_pending_at": _iso(self.inbox.oldest_pending_at),
                "oldest_pending_age_seconds": rounded(self.oldest_pending_age),
                "last_processed_at": _iso(self.inbox.last_processed_at),
            }
        crm = self._crm_dict() if self.crm_enabled else None
        currencies = None
        if self.ledger is not None:
            currencies = {
                "program_currency": self.ledger.currency,
                "program_currency_from": self.ledger.chosen_by,
                "by_currency": {currency or "": {"transactions": transactions, "partners": partners}
                                for currency, (transactions, partners) in sorted(self.ledger.use.items(),
                                                                                 key=lambda i: i[0] or "")},
                "other_currencies": {currency or "": partners for currency, partners in sorted(
                    self.ledger.others.items(), key=lambda i: i[0] or "")},
            }
        backfill = None
        if self.backfill is not None:
            run = self.backfill
            backfill = {name: _iso(value) if isinstance(value, datetime) else value
                        for name, value in asdict(run).items()}
            backfill["entities"] = list(run.entities)
            backfill["live"] = run.live(self.taken_at)
        return {
            "taken_at": _iso(self.taken_at),
            "state": self.state,
            "stuck_after_seconds": self.stuck_after.total_seconds(),
            "inbox": inbox,
            "queue": asdict(self.queue) if self.queue is not None else None,
            "salesforce": crm,
            "ledger": currencies,
            "backfill": backfill,
            "unavailable": self.unavailable,
            "attention": self.attention(),
        }


    def _crm_dict(self) -> dict[str, Any]:
        """The Salesforce section of ``as_dict``."""
        return {
            "by_object": self.crm,
            "backlog": self.crm_backlog,
            "refused": self.crm_refused,
            "last_synced_at": _iso(self.crm_last_synced_at),
            "problem": self.crm_problem,
            "api_usage": self.crm_api_usage,
            "paused": self.crm_paused,
            "org_check": _org_check(self.org_check),
            "bulk_jobs": [job.as_dict() for job in self.bulk_jobs],
        }


def backfill_attention(run: runs.Run | None, now: datetime) -> list[str]:
    """What the latest backfill needs of a person: one that failed, stopped on an error, or died."""
    if run is None or run.done or run.status == runs.RunStatus.ABANDONED:
        return []
    where = f"at {run.entity} page {run.next_page}"
    carry_on = "`partnero-sync backfill` carries it on from there"
    if run.status == runs.RunStatus.FAILED:
        return [f"backfill #{run.id} failed {where}: {run.last_error}; once fixed, {carry_on}"]
    if run.status == runs.RunStatus.STOPPED and run.last_error:
        return [f"backfill #{run.id} stopped {where}: {run.last_error}; {carry_on}"]
    if run.status == runs.RunStatus.RUNNING and not run.live(now):
        return [f"backfill #{run.id} stopped moving {where} {duration((now - run.heartbeat_at).total_seconds())} "
                f"ago (its process died?); {carry_on}"]
    return []


def org_misfit(check: OrgCheck) -> str:
    """A misfit as one sentence: how many problems, and the first few."""
    first = "; ".join(f"{f['object']}{'.' + f['field'] if f['field'] else ''}: {f['problem']}"
                      for f in check.findings[:FIRST_FINDINGS])
    more = ", …" if len(check.findings) > FIRST_FINDINGS else ""
    return (f"the Salesforce org does not fit the mappings: {len(check.findings)} problems ({first}{more}); "
            "`partnero-sync crm check` says what to do")


def _org_check(check: OrgCheck | None) -> dict | None:
    if check is None:
        return None
    return {"verdict": check.verdict, "checked_at": _iso(check.checked_at), "reason": check.reason,
            "findings": list(check.findings)}


def backlog(by_status: dict[str, int]) -> int:
    """Salesforce records of one object still to be sent (pending or waiting for a parent)."""
    return by_status.get(OutboxStatus.PENDING, 0) + by_status.get(OutboxStatus.WAITING, 0)


def take(services, stuck_after: timedelta = STUCK_AFTER, with_ledger: bool = False) -> Snapshot:
    """Read everything (the ledger's currencies only ``with_ledger``: ``partnero-sync status``);
    a source that cannot be read is named in ``unavailable``."""
    snapshot = Snapshot(
        taken_at=services.clock(),
        stuck_after=stuck_after,
        crm_enabled=services.settings.salesforce.enabled,
    )
    try:
        snapshot.inbox = services.inbox.summary()
        if snapshot.crm_enabled or with_ledger:
            with services.inbox.engine.connect() as conn:
                if snapshot.crm_enabled:
                    outbox = Outbox()
                    snapshot.crm = outbox.counts(conn)
                    snapshot.crm_last_synced_at = outbox.last_synced_at(conn)
                    snapshot.bulk_jobs = bulk_jobs.running(conn)
                if with_ledger:
                    snapshot.ledger = ledger.summary(conn, services.settings.currency)
        if snapshot.crm_enabled:
            snapshot.org_check = OrgChecks(services.inbox.engine, services.clock).latest()
        snapshot.backfill = runs.Runs(services.inbox.engine, services.clock).latest()
    except Exception as exc:  # e.g. no schema yet: say so rather than fail the whole report
        snapshot.unavailable["database"] = db.explain(exc) or db.describe_error(exc)
    try:
        snapshot.queue = services.queue.counts()
        if snapshot.crm_enabled:
            snapshot.crm_problem = services.flush_schedule.problem()
            snapshot.crm_api_usage = services.flush_schedule.usage()
            snapshot.crm_paused = services.flush_schedule.paused()
    except TransientError as exc:
        snapshot.unavailable["redis"] = str(exc)
    return snapshot


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def rounded(value: float | None) -> float | None:
    """Seconds to a tenth, as the reports show them (None stays None)."""
    return round(value, 1) if value is not None else None
