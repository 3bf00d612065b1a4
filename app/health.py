"""``/healthz``: can this process serve? Anyone may ask: the answer names the dependencies' state,
whether Salesforce sync is on, and three index-backed figures of the inbox (pending, failed, the
oldest pending one's age), and nothing else (no person, user or error text, nor which programs
exist). With the operator's credentials, the full report: the reasons, and how the work is going,
each program's too when there are several."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app import auth
from sync.core.errors import SyncError
from sync.ops.snapshot import rounded, take
from sync.store import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the database and Redis answer (a backlog or refusals only show in the body);
    503 when either is down or the schema is missing. The reasons and the whole snapshot only
    with the operator's credentials (RQ_DASHBOARD_USERNAME / RQ_DASHBOARD_PASSWORD); credentials
    that are sent and wrong get 401."""
    services = current_app.extensions["partnero"]
    report = _checks(services)
    healthy = all(value == "ok" for value in report.values())
    status = 200 if healthy else 503
    if "Authorization" in request.headers:
        if not auth.authorized(services.settings.dashboard, request):
            return auth.challenge()
        return jsonify(_full(services, report, healthy)), status
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": {name: "ok" if value == "ok" else "down" for name, value in report.items()},
        "salesforce": "on" if services.settings.salesforce.enabled else "off",
    }
    if healthy:
        try:
            backlog = services.inbox.backlog()
        except Exception:  # noqa: BLE001 - gone since the check: the figures are left out
            pass
        else:
            age = None
            if backlog.oldest_pending_at is not None:
                age = max(0.0, (services.clock() - backlog.oldest_pending_at).total_seconds())
            body["work"] = {
                "deliveries_pending": backlog.pending,
                "deliveries_failed": backlog.failed,
                "oldest_pending_age_seconds": rounded(age),
            }
    return jsonify(body), status


def _checks(services) -> dict[str, str]:
    """Each dependency: "ok", or why not."""
    checks = {"database": services.inbox.ping, "redis": services.queue.ping}
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
    return report


def _full(services, report: dict[str, str], healthy: bool) -> dict:
    """The operator's report: each check's reason, Salesforce's login, the snapshot's
    figures and what needs attention."""
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": report,
        "salesforce": services.settings.salesforce.describe(),
    }
    snapshot = take(services) if healthy else None
    if snapshot is not None:
        queue = snapshot.queue
        body["work"] = {
            "queue_depth": queue.queued if queue else None,
            "retries_scheduled": queue.scheduled if queue else None,
            "failed_jobs": queue.failed if queue else None,
            "workers": queue.workers if queue else None,
            **_figures(snapshot),
        }
        if snapshot.several:
            body["programs"] = {name: _program_work(figures) for name, figures in snapshot.programs.items()}
        body["attention"] = snapshot.attention()
        if snapshot.crm_enabled:
            body["salesforce_org"] = _org(snapshot)
            body["salesforce_api"] = _api(snapshot)
        if snapshot.crm_problem:
            body["salesforce_problem"] = snapshot.crm_problem["message"]
    return body


def _program_work(figures) -> dict:
    """One program's figures in the operator's report (deployments of several programs only)."""
    return {"deliveries_pending": figures.inbox.counts.get("pending", 0) if figures.inbox else None,
            **_figures(figures)}


def _figures(figures) -> dict:
    """The inbox's and the outbox's figures of the report, of every program (the snapshot) or of one."""
    return {
        "oldest_pending_age_seconds": rounded(figures.oldest_pending_age),
        "deliveries_failed": figures.inbox.counts.get("failed", 0) if figures.inbox else None,
        "crm_backlog": figures.crm_backlog if figures.crm_enabled else None,
        "crm_refused": figures.crm_refused if figures.crm_enabled else None,
    }


def _api(snapshot) -> dict:
    """The org's API usage against this service's budget (None until read), and whether flushes
    are paused at it: a state, not a failure (it is not among the reasons for attention)."""
    usage = snapshot.crm_api_usage or {}
    paused = snapshot.crm_paused
    return {"used": usage.get("used"), "allowance": usage.get("allowance"), "budget": usage.get("budget"),
            "read_at": usage.get("read_at"), "flushes": "paused" if paused else "running",
            "paused_since": paused["since"] if paused else None}


def _org(snapshot) -> dict | None:
    """The latest check of the org: its verdict, when, and how many problems (the findings are
    ``partnero-sync crm check``'s and ``status --json``'s)."""
    check = snapshot.org_check
    if check is None:
        return None
    return {"verdict": check.verdict, "checked_at": check.checked_at.isoformat(), "problems": len(check.findings),
            "reason": check.reason}
