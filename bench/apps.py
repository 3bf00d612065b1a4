"""The two baseline apps the receiver benchmark compares ``app:create_app()`` against.

Served by gunicorn exactly like the real receiver (same ``--config python:app.server.gunicorn_config``)::

    gunicorn 'bench.apps:hello_app()'  --config python:app.server.gunicorn_config
    gunicorn 'bench.apps:naive_app()'  --config python:app.server.gunicorn_config

Both answer ``POST /webhooks/partnero``, the path the load generator posts to.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from sync.core import envelope, signature
from sync.core.envelope import MalformedDelivery
from sync.worker.queues import connect

#: The queue the naive receiver enqueues to; the benchmark flushes its Redis db before and after.
NAIVE_QUEUE = "partnero-bench"


def hello_app() -> Flask:
    """(a) The floor: a bare Flask POST endpoint that does nothing with the delivery."""
    app = Flask(__name__)

    @app.post("/webhooks/partnero")
    def hello():
        return "Hello, World!"

    return app


def process_delivery(body: bytes) -> None:  # pragma: no cover - never run, only named by jobs
    """The job the naive receiver enqueues; the benchmark runs no worker."""


def naive_app() -> Flask:
    """(b) The receiver without an inbox: verify the signature, ``Queue.enqueue`` the body, 202.

    One RQ ``enqueue`` (one Redis round trip with a MULTI/EXEC pipeline) per request, the job
    carrying the raw body. Nothing is written to SQL, so a Redis loss loses deliveries; this is
    the design the inbox replaces, measured for comparison.
    """
    from rq import Queue

    secrets = tuple(s.strip() for s in os.environ["PARTNERO_WEBHOOK_SECRET"].split(",") if s.strip())
    queue = Queue(NAIVE_QUEUE, connection=connect(os.environ["REDIS_URL"]))

    app = Flask(__name__)

    @app.post("/webhooks/partnero")
    def receive():
        body = request.get_data(cache=False)
        verdict = signature.verify(body, signature.header_values(request.headers), secrets)
        if not verdict.ok:
            return jsonify(error=verdict.value), 401
        try:
            _, event = envelope.read_event(body)
        except MalformedDelivery as exc:
            return jsonify(error=str(exc)), 400
        job = queue.enqueue(
            process_delivery, body, description=event, result_ttl=24 * 3600, job_timeout=300
        )
        return jsonify(status="queued", id=job.id), 202

    return app
