"""``GET /metrics``: Prometheus's text format, read from the database and Redis when scraped, so
every web process on every host answers with the same numbers."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app import auth
from sync import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Behind the operator's credentials when they are set; open when they are not."""
    services = current_app.extensions["partnero"]
    credentials = services.settings.dashboard
    if credentials.enabled and not auth.authorized(credentials, request):
        return auth.challenge()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Collector(services))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
