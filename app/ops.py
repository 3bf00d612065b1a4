"""``/ops``: the deliveries page. What arrived, what each delivery became in the warehouse, the
ledger and Salesforce, charts of the last day or hour, and a button that hands one back to the
workers to apply again. Behind the dashboard's credentials."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Blueprint, Flask, abort, current_app, flash, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException

from app import auth
from sync.core.errors import TransientError
from sync.ops import logs, progress
from sync.ops.charts import DEFAULT_WINDOW, WINDOWS, charts
from sync.ops.history import History
from sync.ops.snapshot import take
from sync.ops.trace import trace
from sync.pipeline.replay import PRUNED
from sync.pipeline.requeue import requeue_one
from sync.settings import Settings
from sync.store.alerts import AlertStore
from sync.store.inbox import DeliveryStatus, RequeueAnswer

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__, url_prefix="/ops")

PAGE_SIZE = 50
#: A replay button's token is good for this long after its page was shown.
TOKEN_MAX_AGE = 24 * 3600
_TOKEN_SALT = "partnero-sync ops replay"


def mount(app: Flask, settings: Settings) -> None:
    """Serve ``/ops``; only when the dashboard's credentials are set."""
    if not settings.dashboard.enabled:
        return
    # The session cookie carries only the message shown after a replay.
    app.config.update(SESSION_COOKIE_PATH="/ops", SESSION_COOKIE_SAMESITE="Lax")
    app.session_interface = auth.SessionCookies()
    app.register_blueprint(bp)


def _services():
    return current_app.extensions["partnero"]


@bp.before_request
def guard():
    if not auth.authorized(_services().settings.dashboard, request):
        return auth.challenge()
    return None


@bp.get("/", strict_slashes=False)
def deliveries():
    """Recent deliveries, newest first, filtered by status, event type, record and program (a
    program this deployment does not serve is no filter: the value is ignored), under the charts
    of the program (or of all) over the window the ``window`` parameter names (24h or 1h)."""
    services = _services()
    status = request.args.get("status", "")
    programs = [program.name for program in services.settings.programs]
    program = request.args.get("program", "")
    filters = {
        "status": status if status in tuple(DeliveryStatus) else None,
        "event_type": request.args.get("event_type", "").strip() or None,
        "entity_id": request.args.get("entity_id", "").strip() or None,
        "program": program if program in programs else None,
    }
    before = request.args.get("before", type=int)
    rows = services.inbox.rows(**filters, before=before, limit=PAGE_SIZE + 1)
    older = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    snapshot = take(services)
    return render_template(
        "ops/deliveries.html",
        rows=rows[:PAGE_SIZE],
        filters=filters,
        before=before,
        older=older,
        statuses=DeliveryStatus,
        event_types=sorted({event for mappings in services.mappings_by_program.values() for event in mappings.events}),
        programs=programs if len(programs) > 1 else [],
        snapshot=snapshot,
        figures=snapshot.programs.get(filters["program"], snapshot),
        **_charts(services, filters["program"], request.args.get("window", ""), snapshot.crm_enabled),
    )


def _charts(services, program: str | None, window: str, crm: bool) -> dict:
    """The template's charts: the window shown (an unknown one is the default), its series of
    ``program`` (None: every program) and the charts drawn from it, alerts marked."""
    shown = WINDOWS.get(window) or WINDOWS[DEFAULT_WINDOW]
    series = History(services.inbox.engine, services.clock).series(program, shown)
    return {"window": shown, "windows": WINDOWS.values(), "default_window": DEFAULT_WINDOW, "series": series,
            "charts": charts(series, alert_marks(services, series.start, program), crm=crm)}


def alert_marks(services, since: datetime, program: str | None = None) -> list[tuple[datetime, str]]:
    """The alerts to mark on the charts, as (time, label) from ``since`` on: each raised and each
    resolved, of ``program`` (and every program's, such as the queue's) or of all."""
    marks = []
    for alert in AlertStore(services.inbox.engine).since(since):
        if program is not None and alert.program not in (None, program):
            continue
        if alert.raised_at >= since:
            marks.append((alert.raised_at, alert.kind))
        if alert.resolved_at is not None and alert.resolved_at >= since:
            marks.append((alert.resolved_at, f"{alert.kind} resolved"))
    return sorted(marks)


@bp.get("/deliveries/<int:event_id>")
def delivery(event_id: int):
    """One delivery and what it became."""
    services = _services()
    found = trace(services, event_id)
    if found is None:
        abort(404, f"There is no delivery #{event_id}.")
    return render_template("ops/delivery.html", t=found, token=_tokens().dumps(event_id),
                           several=len(services.settings.programs) > 1)


@bp.post("/deliveries/<int:event_id>/replay")
def replay(event_id: int):
    """Hand the stored delivery to the workers, who apply it with their mapping files (this
    process's may differ, during a deploy); then show its page: queued, later its outcome.

    The request only sets the row back to pending and wakes a worker: it never waits for a lock
    nor applies anything itself.
    """
    if not auth.same_origin(request):
        abort(403, "Refused: the request did not come from this site's own pages.")
    if not _token_matches(request.form.get("token", ""), event_id):
        abort(403, "Refused: the form's token is missing, wrong or expired. "
                   "Open the delivery's page again and press Replay there.")
    services = _services()
    event = services.inbox.delivery(event_id)
    asked = requeue_one(services.inbox, services.queue, event_id) if event is not None else None
    if asked is None:
        abort(404, f"There is no delivery #{event_id}.")
    log.info("replay from /ops: %s", asked.found,
             extra=logs.delivery_fields(event.id, event.event_type, event.fingerprint))
    if not asked.queued:
        flash(f"Not replayed: {PRUNED}." if asked.found != RequeueAnswer.BUSY else
              "Not replayed: it is being written right now. Try again in a moment.", "note")
        return redirect(url_for(".delivery", event_id=event_id), 303)
    if asked.found == RequeueAnswer.ALREADY_PENDING:
        message = "Already waiting for a worker, which applies it with its mapping files."
    else:
        message = "Replay queued: a worker applies it again with its mapping files; this page shows the outcome."
    if asked.redis_error is not None:
        flash(f"{message} Redis could not take the wake-up ({asked.redis_error}): the worker's sweeper "
              "takes it up once Redis answers.", "note")
    else:
        flash(message, "ok")
    return redirect(url_for(".delivery", event_id=event_id), 303)


def _tokens() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_TOKEN_SALT)


def _token_matches(token: str, event_id: int) -> bool:
    """Whether ``token`` was made by this site for replaying ``event_id``, and is recent enough."""
    try:
        return _tokens().loads(token, max_age=TOKEN_MAX_AGE) == event_id
    except BadSignature:  # also SignatureExpired
        return False


@bp.errorhandler(HTTPException)
def page_error(exc: HTTPException):
    return render_template("ops/error.html", code=exc.code, title=exc.name, message=exc.description), exc.code


@bp.errorhandler(TransientError)
def unavailable(exc: TransientError):
    return render_template("ops/error.html", code=503, title="Unavailable",
                           message=f"{exc}. Try again in a moment."), 503


@bp.app_template_filter("utc")
def _utc(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "–"


bp.add_app_template_filter(progress.duration, "duration")
