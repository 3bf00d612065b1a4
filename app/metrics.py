"""``GET /metrics``: Prometheus's text format, read from the database and Redis when scraped, so
every web process on every host answers with the same numbers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from app import auth
from sync.ops import metrics
from sync.ops.metrics import PREFIX, STORED
from sync.ops.snapshot import ProgramFigures, Snapshot, backfill_attention, take
from sync.store import inbox, runs
from sync.store.alerts import AlertSummary
from sync.store.org_checks import Verdict
from sync.worker.queues import QueueCounts

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Behind the operator's credentials when they are set; open when they are not."""
    services = current_app.extensions["partnero"]
    credentials = services.settings.dashboard
    if credentials.enabled and not auth.authorized(credentials, request):
        return auth.challenge()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(services))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


QUEUE_STATES = ("queued", "scheduled", "started", "failed")


class Collector:
    """What ``/metrics`` shows, read when scraped: the stored counters from Redis, the gauges from
    one snapshot. What cannot be read is left out, and ``up`` says which dependency is down."""

    def __init__(self, services):
        self.services = services

    def collect(self) -> Iterator[Metric]:
        snapshot = take(self.services)
        # Redis down already showed in the snapshot: do not wait on it a second time.
        stored = None if "redis" in snapshot.unavailable else metrics.read(self.services.queue.connection)
        up = GaugeMetricFamily(PREFIX + "up", "Whether /metrics could read the dependency (1) or not (0).",
                               labels=("dependency",))
        up.add_metric(["database"], 0 if "database" in snapshot.unavailable else 1)
        up.add_metric(["redis"], 0 if stored is None else 1)
        yield up
        yield from _gauges(snapshot)
        if stored is not None:
            programs = [program.name for program in self.services.settings.programs]
            for spec in STORED:
                yield spec.family(stored[spec.key], programs)


def _gauges(snapshot: Snapshot) -> Iterator[Metric]:
    """The snapshot's gauges: the queue and the Salesforce org are every program's; the inbox, the
    outbox and the latest backfill have a ``program`` label, a series per program."""
    if snapshot.queue is not None:
        yield from _queue_gauges(snapshot.queue)
    programs = list(snapshot.programs.values())
    if snapshot.inbox is not None:
        yield from _inbox_gauges(programs)
    if snapshot.crm_enabled and "database" not in snapshot.unavailable:
        yield _crm_outbox_gauge(programs)
        if snapshot.org_check is not None:
            yield from _org_gauges(snapshot)
    if snapshot.crm_enabled and "redis" not in snapshot.unavailable:
        yield from _api_gauges(snapshot)
    ran = [figures for figures in programs if figures.backfill is not None]
    if ran:
        yield from _backfill_gauges(ran)
    if snapshot.alerts is not None:
        yield from _alert_gauges(snapshot.alerts)
    yield _attention_gauge(snapshot)


def _attention_gauge(snapshot: Snapshot) -> Metric:
    """What needs a person, as the alerts see it (``Snapshot.concerns``): how many conditions of
    each kind stand, by program ("" for every program's, such as the queue's); absent when none."""
    standing = Counter((concern.kind.value, concern.program or "") for concern in snapshot.concerns())
    gauge = GaugeMetricFamily(PREFIX + "needs_attention", "Conditions that need a person, by kind and program "
                              "(the operator's alerts' conditions; absent when none stands).",
                              labels=["kind", "program"])
    for (kind, program), count in sorted(standing.items()):
        gauge.add_metric([kind, program], count)
    return gauge


def _alert_gauges(found: AlertSummary) -> Iterator[Metric]:
    """The operator's alerts (sync.ops.alerts): those open, and the messages an endpoint failed to take."""
    yield GaugeMetricFamily(PREFIX + "alerts_open", "Conditions alerted and not yet resolved.", value=found.open)
    yield GaugeMetricFamily(PREFIX + "alerts_failing",
                            "Alert messages owed whose sending to ALERT_WEBHOOK_URL failed (0: it takes them).",
                            value=found.failing)


def _queue_gauges(queue: QueueCounts) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        PREFIX + "queue_jobs",
        "Jobs of the partnero queue by state: queued (waiting for a worker), scheduled (retries "
        "waiting for their time), started (running), failed (in RQ's failed registry).",
        labels=("state",),
    )
    for state in QUEUE_STATES:
        jobs.add_metric([state], getattr(queue, state))
    yield jobs
    yield GaugeMetricFamily(PREFIX + "queue_workers", "Workers listening on the partnero queue.",
                            value=queue.workers)


def _inbox_gauges(programs: list[ProgramFigures]) -> Iterator[Metric]:
    deliveries = GaugeMetricFamily(PREFIX + "inbox_deliveries", "Stored deliveries by program and inbox status.",
                                   labels=("program", "status"))
    oldest = GaugeMetricFamily(
        PREFIX + "oldest_pending_age_seconds",
        "Seconds since the program's oldest delivery still pending arrived (0 when none is pending).",
        labels=("program",),
    )
    for figures in programs:
        for status in inbox.DeliveryStatus:
            deliveries.add_metric([figures.name, status], figures.inbox.counts.get(status, 0))
        oldest.add_metric([figures.name], figures.oldest_pending_age or 0.0)
    yield deliveries
    yield oldest


def _crm_outbox_gauge(programs: list[ProgramFigures]) -> Metric:
    records = GaugeMetricFamily(
        PREFIX + "crm_outbox_records",
        "Salesforce records in the outbox by program, object and status (pending and waiting: the "
        "backlog; synced; failed: refused for good).",
        labels=("program", "object", "status"),
    )
    for figures in programs:
        for object_name, by_status in sorted(figures.crm.items()):
            for status, count in by_status.items():
                records.add_metric([figures.name, object_name, status], count)
    return records


def _org_gauges(snapshot: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        PREFIX + "salesforce_org_misfits",
        "Problems the latest check of the Salesforce org against the mappings found (0: it fits, or it "
        "could not tell); `partnero-sync crm check` lists them.",
        value=snapshot.org_misfits,
    )
    yield GaugeMetricFamily(
        PREFIX + "salesforce_org_check_known",
        "1 when the latest check of the Salesforce org could tell whether it fits; 0 when it could not "
        "(no login, no access, Salesforce away).",
        value=0 if snapshot.org_check.verdict is Verdict.CANNOT_TELL else 1,
    )
    yield GaugeMetricFamily(
        PREFIX + "salesforce_org_checked_timestamp_seconds",
        "When the latest check of the Salesforce org ran (Unix time).",
        value=snapshot.org_check.checked_at.timestamp(),
    )


def _api_gauges(snapshot: Snapshot) -> Iterator[Metric]:
    usage = snapshot.crm_api_usage
    if usage is not None:
        yield GaugeMetricFamily(
            PREFIX + "salesforce_api_used",
            "The Salesforce org's API requests in its rolling 24 hours, by every integration, as the latest "
            "answer's Sforce-Limit-Info header (or GET limits) said.",
            value=usage["used"],
        )
        yield GaugeMetricFamily(PREFIX + "salesforce_api_allowance",
                                "The Salesforce org's daily API request allowance.", value=usage["allowance"])
        yield GaugeMetricFamily(
            PREFIX + "salesforce_api_budget",
            "The org's API usage at which this service's flushes pause (SALESFORCE_API_BUDGET), in requests.",
            value=usage["budget"],
        )
    yield GaugeMetricFamily(
        PREFIX + "salesforce_flushes_paused",
        "1 while Salesforce flushes are paused at the API budget (the records wait); else 0.",
        value=1 if snapshot.crm_paused else 0,
    )


def _backfill_gauges(programs: list[ProgramFigures]) -> Iterator[Metric]:
    """Each program's latest backfill (the programs where one ran)."""
    records = GaugeMetricFamily(
        PREFIX + "backfill_records",
        "The program's latest backfill's objects: read, applied (they differed from what was held), "
        "unchanged, skipped (before --since), failed (deliveries that could not be applied).",
        labels=("program", "outcome"),
    )
    attention = GaugeMetricFamily(
        PREFIX + "backfill_needs_attention",
        "1 when the program's latest backfill failed, stopped on an error or stopped moving; else 0.",
        labels=("program",),
    )
    for figures in programs:
        run = figures.backfill
        for counter in runs.COUNTERS:
            records.add_metric([figures.name, "read" if counter == "records" else counter], getattr(run, counter))
        attention.add_metric([figures.name], 1 if backfill_attention(run, figures.taken_at) else 0)
    yield records
    yield attention
