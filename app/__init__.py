"""The web side: the Flask app factory, which ``gunicorn 'app:create_app()'`` serves. At the top of
the layers, beside sync.cli: it may import ``sync.services`` and any layer below it."""

from __future__ import annotations

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app import auth
from sync.mapping import MappingSet
from sync.ops import logs
from sync.pipeline.intake import Intake
from sync.services import Services, load_program_mappings
from sync.settings import Settings


def check_configuration(settings: Settings | None = None) -> tuple[Settings, dict[str, MappingSet]]:
    """The settings (default: the environment) and each program's mappings the web process runs on.

    Raises ``ConfigurationError`` when they cannot work (a program without its webhook secret, a
    mapping file with problems). Connects to nothing; gunicorn's master runs it before starting
    any worker.
    """
    settings = settings or Settings.from_env()
    settings.require_webhook_secret()
    return settings, load_program_mappings(settings)


def create_app(settings: Settings | None = None, *, redis_connection: redis.Redis | None = None) -> Flask:
    """Build the web app from ``settings`` (default: the environment).

    Fails with ``ConfigurationError`` when the configuration cannot work (``check_configuration``).
    Nothing connects to the database or Redis until a request needs it.
    """
    settings, mappings = check_configuration(settings)
    logs.configure(settings.log_level, settings.log_format)
    services = Services.build(settings, redis_connection, mappings)

    app = Flask(__name__)
    app.secret_key = auth.secret_key(settings.dashboard, settings.require_webhook_secret())
    # Werkzeug answers 413 from Content-Length alone, and stops a chunked body one byte past
    # the limit, so the receiver can tell "exactly the limit" from "too large" without reading
    # more than that.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions["partnero"] = services
    app.extensions["partnero.intake"] = Intake(services.inbox, services.queue)

    from app import dashboard, health, metrics, ops, webhooks

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    dashboard.mount(app, settings, services.queue.connection)
    ops.mount(app, settings)
    app.logger.info(
        "partnero-sync web: programs %s; %d mapped event types; Salesforce %s; dashboard %s",
        ", ".join(services.mappings_by_program), len(services.mappings.events), settings.salesforce.describe(),
        f"at {dashboard.PREFIX} and /ops" if settings.dashboard.enabled
        else "off (set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD to serve /rq and /ops)",
    )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.name.lower()), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        app.logger.exception("unhandled error")
        return jsonify(error="internal error"), 500

    return app
