"""What the service is doing, read from the database and Redis at the moment of asking.

One snapshot serves ``partnero-sync status``, the operator's ``/healthz``, ``/metrics`` and
``/ops``, so they never disagree. Each source is read on its own: with Redis down, the inbox still reports.
The figures come added up over every program and, for each program, apart: one program's trouble
is shown under its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sync.core.errors import TransientError
from sync.ops.progress import duration
from sync.settings import Program
from sync.store import bulk_jobs, db, ledger, notifications, runs
from sync.store.alerts import AlertStore, AlertSummary
from sync.store.bulk_jobs import BulkJob
from sync.store.inbox import DeliveryStatus, InboxSummary
from sync.store.org_checks import OrgCheck, OrgChecks, Verdict
from sync.store.outbox import Outbox, OutboxStatus

#: A pending delivery older than this means the backlog is stuck (no worker, or one that fails).
STUCK_AFTER = timedelta(minutes=15)
#: A notification that failed is a concern this long after it was written (it is not sent again;
#: the concern clears by itself once the failures are older).
NOTIFICATIONS_RECENT = timedelta(hours=24)
#: How many of a misfit's findings "needs attention" names (``partnero-sync crm check`` lists all).
FIRST_FINDINGS = 3


#: The code of a whole-call refusal that is a session which cannot be renewed (what
#: ``sync.salesforce.client`` says when SALESFORCE_SESSION_ID expired and no login is configured).
SESSION_CANNOT_RENEW = "INVALID_SESSION_ID"


class Kind(StrEnum):
    """What sort of thing needs a person (``Concern.kind``): short, stable names, the alerts' too."""

    DELIVERIES_FAILED = "deliveries_failed"
    BACKLOG_STUCK = "backlog_stuck"
    CRM_REFUSED = "crm_refused"
    CRM_CALLS_REFUSED = "crm_calls_refused"
    CRM_SESSION = "crm_session"
    NO_WORKER = "no_worker"
    JOBS_FAILED = "jobs_failed"
    BACKFILL = "backfill_stopped"
    API_BUDGET = "api_budget"
    ORG_MISFIT = "org_misfit"
    UNSERVED = "unserved_deliveries"
    NOTIFICATIONS_FAILED = "notifications_failed"


#: Kinds that are told (alerted) but are not a failure: flushes paused at the API budget resume by
#: themselves, the records wait; the snapshot's state stays OK and ``attention`` leaves them out.
NOT_FAILURES = frozenset({Kind.API_BUDGET})


@dataclass(frozen=True)
class Concern:
    """One thing that needs a person, as data: ``key`` names the condition (the same while it
    stands), ``sentence`` is what ``attention`` says of it (it may quote an error), and ``facts``
    hold only counts, kinds, codes, Salesforce object names, durations and times: never an error's
    text or a payload's value, so they may leave the database (``sync.ops.alerts``)."""

    kind: Kind
    #: The program it is of; None: every program's (the queue, the Salesforce org).
    program: str | None
    key: str
    sentence: str
    facts: Mapping[str, Any] = field(default_factory=dict)


def _concern(kind: Kind, program: str | None, sentence: str, facts: Mapping[str, Any],
             part: str | None = None) -> Concern:
    """A concern keyed by its kind, program and ``part`` (a Salesforce object, a code, a run)."""
    key = "/".join(str(p) for p in (kind.value, program, part) if p is not None)
    return Concern(kind, program, key, sentence, dict(facts))


def sentences(concerns: list[Concern]) -> list[str]:
    """What ``attention`` says of ``concerns``: each sentence once (a program's refusals are one
    sentence over its objects), in order, leaving out what is not a failure."""
    said: dict[str, None] = {}
    for concern in concerns:
        if concern.kind not in NOT_FAILURES:
            said.setdefault(concern.sentence)
    return list(said)


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


@dataclass(kw_only=True)
class Figures:
    """What the service holds of one scope at ``taken_at``: every program's rows added up (the
    ``Snapshot`` itself), or one program's (``ProgramFigures``). The deliveries, the Salesforce
    records, the ledger's currencies and the latest backfill, each read the same way for both,
    and what needs a person in them (``Concern``)."""

    taken_at: datetime
    #: How long the oldest pending delivery may wait before the backlog counts as stuck.
    stuck_after: timedelta = STUCK_AFTER
    inbox: InboxSummary | None = None
    crm_enabled: bool = False
    #: Salesforce records by object and outbox status (pending, waiting, synced, failed).
    crm: dict[str, dict[str, int]] = field(default_factory=dict)
    crm_last_synced_at: datetime | None = None
    #: The refused Salesforce records' error codes, counted by object: {object: {code: records}}.
    crm_refusal_codes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The Bulk API 2.0 jobs running now (``sync.store.bulk_jobs``), oldest first.
    bulk_jobs: list[BulkJob] = field(default_factory=list)
    #: The ledger's currencies (read only when asked: it adds up the whole ledger). Of one
    #: program only: amounts are never added across programs.
    ledger: ledger.Summary | None = None
    #: The variable that sets the currency of that program (``Program.variable("CURRENCY")``).
    currency_variable: str = "PARTNERO_CURRENCY"
    #: The latest backfill (``partnero-sync backfill``), if any ran.
    backfill: runs.Run | None = None
    #: The mappings' notifications (``notify``) by status, and those that failed lately.
    notifications: notifications.Summary | None = None

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

    def inbox_concerns(self, program: str | None = None, name: str | None = None) -> list[Concern]:
        """Failed deliveries and a stuck backlog of program ``name``; the commands their sentences
        point to narrowed to ``program`` when one is named."""
        if self.inbox is None:
            return []
        concerns = []
        failed = self.inbox.counts.get(DeliveryStatus.FAILED, 0)
        if failed:
            ops, requeue = ("/ops", "`partnero-sync requeue-failed`") if program is None else \
                (f"/ops?program={program}", f"`partnero-sync requeue-failed --program {program}`")
            concerns.append(_concern(Kind.DELIVERIES_FAILED, name, f"{failed} deliveries failed: see "
                                    f"`partnero-sync status` and {ops}, then {requeue} after a fix",
                                    {"deliveries": failed}))
        age = self.oldest_pending_age
        if age is not None and age > self.stuck_after.total_seconds():
            concerns.append(_concern(Kind.BACKLOG_STUCK, name, f"the oldest pending delivery has waited "
                                    f"{duration(age)}: is a worker running?", {"waited_seconds": round(age)}))
        return concerns

    def record_concerns(self, name: str | None = None) -> list[Concern]:
        """The latest backfill's trouble, records Salesforce refused (a concern per object, each
        saying the program's sentence, with the refusal codes counted) and notifications that
        failed lately, of program ``name``."""
        concerns = backfill_concerns(self.backfill, self.taken_at, name)
        failed = self.notifications.failed_recently if self.notifications is not None else 0
        if failed:
            concerns.append(_concern(Kind.NOTIFICATIONS_FAILED, name, f"{failed} of the mappings' notifications "
                                     f"failed in the last {duration(NOTIFICATIONS_RECENT.total_seconds())}: each "
                                     "delivery's page in /ops says why", {"notifications": failed}))
        if self.crm_refused:
            sentence = f"Salesforce refused {self.crm_refused} records: see `partnero-sync crm-errors`"
            for obj, by_status in sorted(self.crm.items()):
                if by_status.get(OutboxStatus.FAILED, 0):
                    concerns.append(_concern(Kind.CRM_REFUSED, name, sentence, {
                        "object": obj, "records": by_status[OutboxStatus.FAILED],
                        "codes": dict(sorted(self.crm_refusal_codes.get(obj, {}).items()))}, part=obj))
        return concerns

    def scope_dict(self) -> dict[str, Any]:
        """The inbox, Salesforce records, ledger and backfill parts of ``as_dict``."""
        inbox = None
        if self.inbox is not None:
            inbox = {
                "by_status": self.inbox.counts,
                "oldest_pending_at": _iso(self.inbox.oldest_pending_at),
                "oldest_pending_age_seconds": rounded(self.oldest_pending_age),
                "last_processed_at": _iso(self.inbox.last_processed_at),
            }
        crm = None
        if self.crm_enabled:
            crm = {"by_object": self.crm, "backlog": self.crm_backlog, "refused": self.crm_refused,
                   "last_synced_at": _iso(self.crm_last_synced_at),
                   "bulk_jobs": [job.as_dict() for job in self.bulk_jobs]}
        told = self.notifications
        return {"inbox": inbox, "salesforce": crm, "ledger": _ledger_dict(self.ledger),
                "backfill": _backfill_dict(self.backfill, self.taken_at),
                "notifications": None if told is None else {**told.counts, "failed_recently": told.failed_recently}}


@dataclass(kw_only=True)
class ProgramFigures(Figures):
    """One program's part of a snapshot: its deliveries, Salesforce records, ledger and latest
    backfill, so one program's trouble is shown under its name."""

    name: str

    def concerns(self) -> list[Concern]:
        """What a person should look at in this program."""
        return self.inbox_concerns(self.name, self.name) + self.record_concerns(self.name)

    def attention(self) -> list[str]:
        """What a person should look at in this program, one sentence each."""
        return sentences(self.concerns())

    def as_dict(self) -> dict[str, Any]:
        return {**self.scope_dict(), "attention": self.attention()}


@dataclass(kw_only=True)
class Snapshot(Figures):
    """What the service is doing at ``taken_at``: each source's figures, every program's added up
    (the ledger's only when there is one program), each program's in ``programs``, or why a
    source could not be read."""

    #: Each program's figures, in PARTNERO_PROGRAMS' order (one program: the figures above).
    programs: dict[str, ProgramFigures] = field(default_factory=dict)
    queue: QueueCounts | None = None
    #: What stops every Salesforce call, when something does: {"code", "message", "since"}.
    crm_problem: dict | None = None
    #: The org's API usage as last read: {"used", "allowance", "budget", "read_at"} (budget in calls).
    crm_api_usage: dict | None = None
    #: Flushes paused at the API budget (not a failure: the records wait): {"used", "allowance",
    #: "budget", "since"}.
    crm_paused: dict | None = None
    #: The latest check of the org against the mappings (``sync.store.org_checks``), if one ran.
    org_check: OrgCheck | None = None
    #: What could not be read, and why: {"database": "...", "redis": "..."}.
    unavailable: dict[str, str] = field(default_factory=dict)
    #: ALERT_WEBHOOK_FORMAT when alerts are on (ALERT_WEBHOOK_URL set); None: off.
    alerts_format: str | None = None
    #: The open alerts, a failing endpoint and the last message sent (``sync.store.alerts``).
    alerts: AlertSummary | None = None

    @property
    def several(self) -> bool:
        """Whether the deployment serves more than one program (then trouble is told per program)."""
        return len(self.programs) > 1

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

    def concerns(self) -> list[Concern]:
        """Everything that needs a person, as data (``Concern``), in the order ``attention`` says
        it. With several programs, each program's sentences come under its name ("friends: 3
        deliveries failed"), then what is everybody's (the queue, the Salesforce org)."""
        if not self.several:
            name = next(iter(self.programs), None)
            return (self.inbox_concerns(None, name) + self.shared_concerns()
                    + self.record_concerns(name))
        concerns = [replace(concern, sentence=f"{name}: {concern.sentence}")
                    for name, figures in self.programs.items() for concern in figures.concerns()]
        unserved = self.unserved_pending
        if unserved:
            concerns.append(_concern(Kind.UNSERVED, None, f"{unserved} deliveries of programs this deployment no "
                                    "longer serves wait: name the programs in PARTNERO_PROGRAMS again to apply them",
                                    {"deliveries": unserved}))
        return concerns + self.shared_concerns()

    def attention(self) -> list[str]:
        """What a person should look at, one sentence each; empty when all is well."""
        return sentences(self.concerns())

    @property
    def unserved_pending(self) -> int:
        """Pending deliveries of programs the deployment no longer serves (no worker applies
        them): every program's pending ones less those of the programs served."""
        if self.inbox is None or any(figures.inbox is None for figures in self.programs.values()):
            return 0
        served = sum(figures.inbox.counts.get(DeliveryStatus.PENDING, 0) for figures in self.programs.values())
        return max(0, self.inbox.counts.get(DeliveryStatus.PENDING, 0) - served)

    def shared_concerns(self) -> list[Concern]:
        """What is every program's: the job queue, Salesforce refusing every call, flushes paused
        at the API budget, the org's fit."""
        concerns = []
        if self.queue is not None:
            if self.queue.failed:
                concerns.append(_concern(Kind.JOBS_FAILED, None, f"{self.queue.failed} jobs are in RQ's failed "
                                        "registry", {"jobs": self.queue.failed}))
            if (self.queue.queued or self.queue.scheduled) and not self.queue.workers:
                concerns.append(_concern(Kind.NO_WORKER, None, f"{self.queue.queued} jobs wait and no worker "
                                        "listens on the queue", {"jobs": self.queue.queued,
                                                                 "retries": self.queue.scheduled}))
        if self.crm_problem:
            code = str(self.crm_problem.get("code") or "unknown")
            kind = Kind.CRM_SESSION if code == SESSION_CANNOT_RENEW else Kind.CRM_CALLS_REFUSED
            concerns.append(_concern(kind, None, f"Salesforce refuses every call: {self.crm_problem['message']}",
                                    {"code": code, "since": self.crm_problem.get("since")}, part=code))
        if self.crm_enabled and self.crm_paused:
            paused = self.crm_paused
            concerns.append(_concern(Kind.API_BUDGET, None, "Salesforce flushes are paused at the API budget: "
                                    "the records wait", {key: paused.get(key) for key in
                                                         ("used", "allowance", "budget", "since")}))
        if self.org_misfits:
            concerns.append(_concern(Kind.ORG_MISFIT, None, org_misfit(self.org_check), {
                "problems": self.org_misfits,
                "objects": sorted({str(f["object"]) for f in self.org_check.findings if f.get("object")})}))
        return concerns

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for ``status --json``."""
        scope = self.scope_dict()
        if scope["salesforce"] is not None:
            scope["salesforce"] |= {"problem": self.crm_problem, "api_usage": self.crm_api_usage,
                                    "paused": self.crm_paused, "org_check": _org_check(self.org_check)}
        return {
            "taken_at": _iso(self.taken_at),
            "state": self.state,
            "stuck_after_seconds": self.stuck_after.total_seconds(),
            **scope,
            "queue": asdict(self.queue) if self.queue is not None else None,
            "programs": {name: figures.as_dict() for name, figures in self.programs.items()},
            "unavailable": self.unavailable,
            "attention": self.attention(),
            "alerts": self.alerts_dict(),
        }

    def alerts_dict(self) -> dict[str, Any]:
        """The alerts' part of ``as_dict``: on or off, open, failing, the last message sent."""
        found: dict[str, Any] = {"enabled": self.alerts_format is not None, "format": self.alerts_format}
        if self.alerts is not None:
            found |= {name: _iso(value) if isinstance(value, datetime) else value
                      for name, value in asdict(self.alerts).items()}
            found["open_keys"] = list(self.alerts.open_keys)
        return found


def _ledger_dict(summary: ledger.Summary | None) -> dict[str, Any] | None:
    """The ledger's currencies, for ``as_dict``."""
    if summary is None:
        return None
    return {
        "program_currency": summary.currency,
        "program_currency_from": summary.chosen_by,
        "by_currency": {currency or "": {"transactions": transactions, "partners": partners}
                        for currency, (transactions, partners) in sorted(summary.use.items(),
                                                                         key=lambda i: i[0] or "")},
        "other_currencies": {currency or "": partners for currency, partners in sorted(
            summary.others.items(), key=lambda i: i[0] or "")},
    }


def _backfill_dict(run: runs.Run | None, now: datetime) -> dict[str, Any] | None:
    """A backfill run, for ``as_dict``."""
    if run is None:
        return None
    found = {name: _iso(value) if isinstance(value, datetime) else value for name, value in asdict(run).items()}
    found["entities"] = list(run.entities)
    found["live"] = run.live(now)
    return found


def backfill_concerns(run: runs.Run | None, now: datetime, name: str | None = None) -> list[Concern]:
    """What the latest backfill (of program ``name``) needs of a person: one that failed,
    stopped on an error, or died."""
    if run is None or run.done or run.status == runs.RunStatus.ABANDONED:
        return []
    where = f"at {run.entity} page {run.next_page}"
    carry_on = "`partnero-sync backfill` carries it on from there"
    facts = {"run": run.id, "entity": run.entity, "page": run.next_page}
    if run.status == runs.RunStatus.FAILED:
        sentence, facts["state"] = f"backfill #{run.id} failed {where}: {run.last_error}; once fixed, {carry_on}", \
            "failed"
    elif run.status == runs.RunStatus.STOPPED and run.last_error:
        sentence, facts["state"] = f"backfill #{run.id} stopped {where}: {run.last_error}; {carry_on}", "stopped"
    elif run.status == runs.RunStatus.RUNNING and not run.live(now):
        quiet = (now - run.heartbeat_at).total_seconds()
        sentence = f"backfill #{run.id} stopped moving {where} {duration(quiet)} ago (its process died?); {carry_on}"
        facts["state"] = "died"
    else:
        return []
    return [_concern(Kind.BACKFILL, name, sentence, facts, part=str(run.id))]


def backfill_attention(run: runs.Run | None, now: datetime) -> list[str]:
    """What the latest backfill needs of a person, one sentence each (see ``backfill_concerns``)."""
    return sentences(backfill_concerns(run, now))


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
        alerts_format=services.settings.alert_webhook_format if services.settings.alerts_enabled else None,
    )
    try:
        _read_database(snapshot, services, with_ledger)
        snapshot.alerts = AlertStore(services.inbox.engine).summary()
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


def _read_database(snapshot: Snapshot, services, with_ledger: bool) -> None:
    """The database's part of the snapshot: every program's figures added up, and each program's.

    With one program, its figures are the ones added up (read once), and the ledger's currencies
    are its own; with several, each program's are read apart, and only those hold a ledger (a
    program's money is never added to another's)."""
    programs = services.settings.programs
    one = programs[0] if len(programs) == 1 else None
    _read(snapshot, services, None, one if with_ledger else None)
    for program in programs if one is None else ():
        figures = ProgramFigures(name=program.name, taken_at=snapshot.taken_at, stuck_after=snapshot.stuck_after,
                                 crm_enabled=snapshot.crm_enabled)
        _read(figures, services, program.name, program if with_ledger else None)
        snapshot.programs[program.name] = figures
    if one is not None:
        snapshot.programs[one.name] = ProgramFigures(name=one.name, **{f.name: getattr(snapshot, f.name)
                                                                       for f in fields(Figures)})
    if snapshot.crm_enabled:
        snapshot.org_check = OrgChecks(services.inbox.engine, services.clock).latest()


def _read(figures: Figures, services, program: str | None, ledger_of: Program | None) -> None:
    """Fill ``figures`` with the rows of ``program`` (None: of every program), and with the
    ledger's currencies of ``ledger_of`` (None: none read)."""
    engine = services.inbox.engine
    figures.inbox = services.inbox.summary(program=program)
    with engine.connect() as conn:
        figures.notifications = notifications.summary(conn, program, recent=figures.taken_at - NOTIFICATIONS_RECENT)
        if figures.crm_enabled:
            outbox = Outbox()
            figures.crm = outbox.counts(conn, program=program)
            figures.crm_last_synced_at = outbox.last_synced_at(conn, program=program)
            figures.crm_refusal_codes = outbox.refusal_codes(conn, program=program)
            figures.bulk_jobs = bulk_jobs.running(conn, program=program)
        if ledger_of is not None:
            figures.ledger = ledger.summary(conn, ledger_of.currency, program=ledger_of.name)
            figures.currency_variable = ledger_of.variable("CURRENCY")
    figures.backfill = runs.Runs(engine, services.clock).latest(program)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def rounded(value: float | None) -> float | None:
    """Seconds to a tenth, as the reports show them (None stays None)."""
    return round(value, 1) if value is not None else None
