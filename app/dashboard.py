"""RQ's dashboard (rq-dashboard) at ``/rq``, behind the operator's credentials.

Served only when RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD are set. Its actions (delete,
empty, requeue, compact) are refused unless RQ_DASHBOARD_ALLOW_ACTIONS=true, and even then only
from the dashboard's own pages.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, request

from app import auth
from sync.settings import Settings, redact_url

log = logging.getLogger(__name__)

PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"


def mount(app: Flask, settings: Settings, connection: redis.Redis) -> None:
    if not settings.dashboard.enabled:
        return
    import rq_dashboard

    app.config.update(
        # Shown on the page (its password masked); the connection itself is ``connection``.
        RQ_DASHBOARD_REDIS_URL=(redact_url(settings.redis_url),),
        RQ_DASHBOARD_DISABLE_DELETE=not settings.dashboard.allow_actions,
        # Show job descriptions (ours name event types and inbox rows), never the arguments.
        RQ_DASHBOARD_SHOW_FULL_ARGS=False,
        RQ_DASHBOARD_POLL_INTERVAL=5000,
    )
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)

    def guard_dashboard():
        if not auth.authorized(settings.dashboard, request):
            return auth.challenge()
        if _is_action():
            if not settings.dashboard.allow_actions:
                return jsonify(status="DISABLED", error="dashboard actions are off: set "
                               "RQ_DASHBOARD_ALLOW_ACTIONS=true to allow them"), 403
            if not auth.same_origin(request):
                return jsonify(error="refused: the request did not come from the dashboard's pages"), 403
            log.warning("dashboard action by %s: %s %s", settings.dashboard.username, request.method, request.path)
        return None

    # The guard runs for the dashboard's requests only, before anything of rq-dashboard's. And
    # rq-dashboard connects anew from the URL on every request; ours is given instead (the same
    # client the app enqueues with, which in `dev` may be the in-process stand-in).
    app.before_request_funcs[BLUEPRINT] = [guard_dashboard] + [
        f for f in app.before_request_funcs.get(BLUEPRINT, []) if f.__name__ != "push_rq_connection"
    ]
    app.redis_conn = connection


def _is_action() -> bool:
    # Everything that changes something is a POST, except "requeue all", which also answers GET.
    return request.method not in ("GET", "HEAD") or request.endpoint == f"{BLUEPRINT}.requeue_all"
