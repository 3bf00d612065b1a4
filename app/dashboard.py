"""RQ's dashboard (rq-dashboard) at ``/rq``, behind the operator's credentials.

Served only when RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD are set. Its actions (delete,
empty, requeue, compact) are refused unless RQ_DASHBOARD_ALLOW_ACTIONS=true, and even then only
from the dashboard's own pages.

Two things rq-dashboard does not do, done here: a job that is not there (any more: finished jobs
are kept a day, failed ones a week, see ``sync.worker.queues``) is a 404, not a 500; and the job page,
which puts the job's description, result, metadata and traceback into the page as HTML
(rq-dashboard issue #526), gets them HTML-escaped, so whatever text reaches them shows as text.
"""

from __future__ import annotations

import html
import logging

import redis
from flask import Flask, Response, jsonify, request
from rq.exceptions import NoSuchJobError

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
    app.register_error_handler(NoSuchJobError, _no_such_job)
    app.after_request_funcs.setdefault(BLUEPRINT, []).append(_escape_job_page_data)


def _no_such_job(_exc: NoSuchJobError):
    message = "no such job: it never existed, or it is older than RQ keeps it"
    if request.path.endswith(".json"):
        return jsonify(error=message), 404
    return Response(message + "\n", status=404, mimetype="text/plain")


def _escape_job_page_data(response: Response) -> Response:
    """The data behind a job's page, every text in it HTML-escaped: that page's template inserts
    them as HTML (the job lists escape what they show themselves, so they are left alone)."""
    if request.endpoint == f"{BLUEPRINT}.job_info" and response.status_code == 200 and response.is_json:
        response.set_data(jsonify(_escaped(response.get_json())).get_data())
    return response


def _escaped(value):
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def _is_action() -> bool:
    # Everything that changes something is a POST, except "requeue all", which also answers GET.
    return request.method not in ("GET", "HEAD") or request.endpoint == f"{BLUEPRINT}.requeue_all"
