"""Operational endpoints: ``/healthz``."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from sync.errors import SyncError

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    services = current_app.extensions["partnero"]
    checks = {"database": services.inbox.ping, "redis": services.jobs.ping}
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except SyncError as exc:
            report[name] = f"down: {exc}"
        except Exception as exc:  # e.g. the schema is missing: say so, do not 500
            report[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        else:
            report[name] = "ok"
    healthy = all(value == "ok" for value in report.values())
    salesforce = services.settings.salesforce.describe()
    return jsonify(status="ok" if healthy else "unavailable", checks=report, salesforce=salesforce), (
        200 if healthy else 503
    )
