"""``partnero-sync status`` as text: the snapshot as an aligned table a person reads, with a line
per program when the deployment serves several."""

from __future__ import annotations

from datetime import datetime

from sync.ops.progress import duration
from sync.ops.snapshot import Health, ProgramFigures, Snapshot, backlog
from sync.ops.terminal import safe
from sync.store.inbox import DeliveryStatus
from sync.store.ledger import Summary
from sync.store.org_checks import Verdict
from sync.store.outbox import OutboxStatus
from sync.store.runs import Run

#: How the sources ``Snapshot.unavailable`` names are written for a person.
_SOURCES = {"database": "database", "redis": "Redis"}


def render(snapshot: Snapshot, salesforce: str) -> str:
    """The snapshot, a section per source; ``salesforce`` says whether CRM sync is on, and how."""
    rows: list[tuple[str, str]] = []  # (label, value); a label without indent heads a section
    inbox = snapshot.inbox
    if inbox is None:
        rows.append(("Inbox", f"cannot tell: {snapshot.unavailable.get('database', 'not read')}"))
    else:
        rows.append(("Inbox", ""))
        rows += [(f"  {status}", str(inbox.counts[status])) for status in DeliveryStatus]
        oldest = inbox.oldest_pending_at
        rows.append(("  oldest pending", _ago(oldest, snapshot.taken_at) if oldest else "nothing pending"))
        rows.append(("  last processed", _ago(inbox.last_processed_at, snapshot.taken_at)))
    queue = snapshot.queue
    if queue is None:
        rows.append(("Queue", f"cannot tell: {snapshot.unavailable.get('redis', 'not read')}"))
    else:
        rows += [
            ("Queue", ""),
            ("  wake-ups waiting", str(queue.queued)),
            ("  retries scheduled", str(queue.scheduled)),
            ("  running", str(queue.started)),
            ("  failed jobs", str(queue.failed)),
            ("  workers", str(queue.workers)),
        ]
    rows.append(("Salesforce", salesforce))
    if snapshot.crm_enabled and inbox is not None:
        for obj, by_status in sorted(snapshot.crm.items()):
            rows.append((f"  {obj}", f"backlog {backlog(by_status)}, refused {by_status.get(OutboxStatus.FAILED, 0)}, "
                                     f"synced {by_status.get(OutboxStatus.SYNCED, 0)}"))
        rows.append(("  last synced record", _ago(snapshot.crm_last_synced_at, snapshot.taken_at)))
        rows.append(("  org", _org(snapshot)))
        rows += _bulk_jobs(snapshot)
    if snapshot.crm_enabled and queue is not None:
        rows += _api(snapshot)
    if snapshot.ledger is not None:
        rows += _ledger(snapshot.ledger, snapshot.currency_variable)
    if snapshot.backfill is not None:
        rows += _backfill(snapshot.backfill, snapshot.taken_at, snapshot.several)
    rows += _notifications(snapshot)
    if snapshot.several and inbox is not None:
        rows.append(("Programs", ""))
        rows += [(f"  {name}", _program(figures)) for name, figures in snapshot.programs.items()]
    rows += _alerts(snapshot)
    rows = [(safe(label), safe(value)) for label, value in rows]  # object names, currencies, errors: from outside
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join([f"{label:<{width}}{value}".rstrip() for label, value in rows] + _verdict(snapshot))


def _verdict(snapshot: Snapshot) -> list[str]:
    """What needs attention, one line each, and whether all is well or cannot be told."""
    reasons = snapshot.attention()
    lines = ["Needs attention"] + [f"  - {safe(reason)}" for reason in reasons] if reasons else []
    if snapshot.state == Health.UNKNOWN:
        unread = " and ".join(_SOURCES.get(name, name) for name in sorted(snapshot.unavailable))
        lines.append(f"Cannot tell whether all is well: the {unread} could not be read.")
    elif not reasons:
        lines.append("All well: nothing needs attention.")
    return lines


def _notifications(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The mappings' notifications (``notify``) by status, when any were written."""
    told = snapshot.notifications
    if told is None or not any(told.counts.values()):
        return []
    waiting = told.oldest_age(snapshot.taken_at)
    oldest = f", the oldest unsent written {duration(waiting)} ago" if told.oldest_unsent_at else ""
    return [("Notifications", ", ".join(f"{status} {count}" for status, count in told.counts.items()) + oldest)]


def _alerts(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The operator's alerts: on or off, the open ones, the last message sent, a failing endpoint."""
    if snapshot.alerts_format is None:
        return [("Alerts", "off (ALERT_WEBHOOK_URL is not set)")]
    rows = [("Alerts", f"on ({snapshot.alerts_format})")]
    found = snapshot.alerts
    if found is None:
        return rows + [("  open", "cannot tell: the database could not be read")]
    rows.append(("  open", f"{found.open} ({', '.join(found.open_keys)})" if found.open else "none"))
    last = f"{found.last_what}, {found.last_outcome}, {_ago(found.last_at, snapshot.taken_at)}" if found.last_at \
        else "none yet"
    rows.append(("  last sent", last))
    if found.failing:
        rows.append(("  failing", f"since {_ago(found.failing_since, snapshot.taken_at)}: {found.last_error}; "
                                  f"{found.attempts} attempts, {found.failing} messages owed"))
        rows.append(("  next try", f"{found.next_try_at:%Y-%m-%d %H:%M:%S} UTC" if found.next_try_at else "now"))
    return rows


def _ledger(summary: Summary, variable: str) -> list[tuple[str, str]]:
    """The ledger's currencies: the one Salesforce gets totals in (``variable`` sets it), and
    partners earning in others."""
    if summary.currency is None:
        return [("Ledger", ""), ("  program currency", summary.describe(variable))]
    others = ", ".join(f"{currency or 'no currency'}: {partners} partner{'s' if partners != 1 else ''}"
                       for currency, partners in sorted(summary.others.items(), key=lambda i: i[0] or ""))
    return [
        ("Ledger", ""),
        ("  program currency", summary.describe(variable)),
        ("  other currencies", f"{others} (left out of Salesforce; see `partnero-sync ledger PARTNER_ID`)"
                               if others else "none"),
    ]


def _program(figures: ProgramFigures) -> str:
    """One program on one line: its deliveries by status and oldest pending one, its Salesforce
    backlog and refusals, its currency."""
    inbox = figures.inbox
    parts = [", ".join(f"{status} {inbox.counts[status]}" for status in DeliveryStatus)]
    age = figures.oldest_pending_age
    parts.append(f"oldest pending {duration(age)} old" if age is not None else "nothing pending")
    if figures.crm_enabled:
        parts.append(f"Salesforce backlog {figures.crm_backlog}, refused {figures.crm_refused}")
    if figures.ledger is not None:
        parts.append(_currency(figures))
    return "; ".join(parts)


def _currency(figures: ProgramFigures) -> str:
    """A program's currency, what chose it, and how many partners earn in others."""
    summary = figures.ledger
    said = f"currency {summary.describe(figures.currency_variable)}"
    others = sum(summary.others.values())
    return said + (f", {others} partner{'s' if others != 1 else ''} earning in others" if others else "")


def _backfill(run: Run, now: datetime, several: bool = False) -> list[tuple[str, str]]:
    """The latest backfill: where it is (or how it ended), and what it did; of which program,
    when there are several."""
    since = f", since {run.since:%Y-%m-%d}" if run.since else ""
    of = f" of program {run.program}" if several else ""
    if run.done:
        state = f"finished {_ago(run.finished_at, now)}"
    else:
        pages = f" of {run.last_page}" if run.last_page else ""
        state = f"{run.status} at {run.entity} page {run.next_page}{pages}, last moved {_ago(run.heartbeat_at, now)}"
    return [
        ("Backfill", f"#{run.id}{of} ({', '.join(run.entities)}{since})"),
        ("  state", state),
        ("  records", f"{run.records:,} read: {run.applied:,} applied, {run.unchanged:,} unchanged, "
                      f"{run.skipped:,} skipped, {run.failed:,} failed"),
    ]


def _bulk_jobs(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The Bulk API 2.0 jobs running now: id, object (and program, when there are several),
    records, state, since when."""
    return [(f"  bulk job {job.job_id}", f"{job.object}{' of ' + job.program if snapshot.several else ''}, "
                                          f"{job.records:,} records, {job.state}, "
                                          f"since {_ago(job.created_at, snapshot.taken_at)}")
            for job in snapshot.bulk_jobs]


def _api(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The org's API usage against this service's budget, and whether flushes are paused at it
    (not a failure: the records wait)."""
    usage = snapshot.crm_api_usage
    if usage is None:
        rows = [("  API usage", "not read yet (every answer of Salesforce says it)")]
    else:
        read_at = datetime.fromisoformat(usage["read_at"])
        rows = [("  API usage", f"{usage['used']:,} of {usage['allowance']:,} daily requests, budget "
                               f"{usage['budget']:,} (SALESFORCE_API_BUDGET); read {_ago(read_at, snapshot.taken_at)}")]
    paused = snapshot.crm_paused
    if paused is not None:
        since = datetime.fromisoformat(paused["since"])
        rows.append(("  flushes", f"paused at the API budget since {_ago(since, snapshot.taken_at)}: the records "
                                  "wait, and flushes resume by themselves when usage falls under it "
                                  "(`partnero-sync crm-flush --force` sends now)"))
    return rows


def _org(snapshot: Snapshot) -> str:
    """The latest check of the org against the mappings, and when it ran."""
    check = snapshot.org_check
    if check is None:
        return "not checked yet (a worker checks when it starts)"
    when = f"checked {_ago(check.checked_at, snapshot.taken_at)}"
    if check.verdict is Verdict.CANNOT_TELL:
        return f"cannot tell: {check.reason}; {when}"
    if check.verdict is Verdict.MISFIT:
        return f"does not fit the mappings: {len(check.findings)} problems; {when}"
    return f"fits the mappings; {when}"


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    return f"{when:%Y-%m-%d %H:%M:%S} UTC ({duration(max(0.0, (now - when).total_seconds()))} ago)"
