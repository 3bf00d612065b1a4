"""``/healthz``: can this process serve? And, for whoever looks, how the work is going."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from sync import db, stats
from sync.errors import SyncError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the database and Redis answer (a backlog or refusals only show in the body);
    503 with the reason when either is down or the schema is missing."""
    services = current_app.extensions["partnero"]
    checks = {"database": services.inbox.ping, "redis": services.jobs.ping}
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except SyncError as exc:
            report[name] = f"down: {exc}"
        except Exception as exc:  # e.g. the schema is missing: say so, do not 500
            kind, detail = type(exc).__name__, db.describe_error(exc)
            report[name] = f"error: {kind}" if detail == kind else f"error: {kind}: {detail}"
        else:
            report[name] = "ok"
    healthy = all(value == "ok" for value in report.values())
    snapshot = stats.take(services) if healthy else None
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": report,
        "salesforce": services.settings.salesforce.describe(),
    }
    if snapshot is not None:
        queue = snapshot.queue
        body["work"] = {
            "queue_depth": queue.queued if queue else None,
            "retries_scheduled": queue.scheduled if queue else None,
            "failed_jobs": queue.failed if queue else None,
            "workers": queue.workers if queue else None,
            "oldest_pending_age_seconds": stats.rounded(snapshot.oldest_pending_age),
            "deliveries_failed": snapshot.inbox.counts.get("failed", 0) if snapshot.inbox else None,
            "crm_backlog": snapshot.crm_backlog if snapshot.crm_enabled else None,
            "crm_refused": snapshot.crm_refused if snapshot.crm_enabled else None,
        }
        body["attention"] = snapshot.attention()
        if snapshot.crm_problem:
            body["salesforce_problem"] = snapshot.crm_problem["message"]
    return jsonify(body), 200 if healthy else 503
