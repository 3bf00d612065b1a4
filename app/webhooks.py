"""``POST /webhooks/partnero``: verify, store durably in the inbox (the intake then wakes a worker),
answer 202."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.server.gunicorn_worker import RECEIVED_AT
from sync.core import envelope, signature
from sync.core.envelope import MalformedDelivery
from sync.core.errors import TransientError
from sync.mapping import identify
from sync.ops import logs, metrics
from sync.pipeline.intake import Intake
from sync.services import Services
from sync.store.inbox import Delivery, DeliveryStatus

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

#: The ``reason`` a refusal is counted under, by signature verdict.
_SIGNATURE_REASONS = {
    signature.Verdict.MISSING: metrics.MISSING_SIGNATURE,
    signature.Verdict.MALFORMED: metrics.MALFORMED_SIGNATURE,
    signature.Verdict.MISMATCH: metrics.BAD_SIGNATURE,
}


@bp.post("/webhooks/partnero")
def receive():
    # Every answer is counted once: here those raised as exceptions, in _receive the others.
    try:
        return _receive()
    except RequestEntityTooLarge:
        metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=metrics.TOO_LARGE)
        raise
    except Exception:  # answered by the app's error handlers (a 500, a client gone mid-body)
        metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=metrics.ERROR)
        raise


def _receive():
    services = current_app.extensions["partnero"]
    return _accept(_read_body(services.settings.max_body_bytes), services, current_app.extensions["partnero.intake"])


def _read_body(limit: int) -> bytes:
    """The request's raw bytes, exactly as signed; too large a body is refused unread, or as soon
    as it passes the limit (a chunked one is cut one byte past it)."""
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()  # from the header alone: the body is never read
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _accept(body: bytes, services: Services, intake: Intake):
    """Verify ``body``, read its envelope, and store it through ``intake``: the answer to send."""
    verdict = signature.verify(
        body, signature.header_values(request.headers), services.settings.webhook_secrets
    )
    if not verdict.ok:
        log.warning("refused delivery from %s: %s", request.remote_addr, verdict.value)
        return _refuse(401, verdict.value, _SIGNATURE_REASONS[verdict])

    try:
        document, event = envelope.read_event(body)
    except MalformedDelivery as exc:
        log.warning("refused signed delivery: %s", exc)
        return _refuse(400, str(exc), metrics.MALFORMED_JSON)

    mapping = services.mappings.for_event(event)
    delivery = Delivery(
        body=body,
        event_type=event,
        status=DeliveryStatus.PENDING if mapping is not None else DeliveryStatus.IGNORED,
        entity_id=identify(mapping, document) if mapping is not None else None,
    )
    try:
        receipt = intake.submit(delivery, request.environ.get(RECEIVED_AT))
    except TransientError as exc:
        log.error("could not store a delivery, answering 503: %s", exc,
                  extra=logs.delivery_fields(None, event, delivery.fingerprint))
        response = _refuse(503, "could not store the delivery; try again", metrics.UNAVAILABLE)
        response[0].headers["Retry-After"] = "30"
        return response
    log.info("delivery %s", receipt.status,
             extra=logs.delivery_fields(receipt.id, event, delivery.fingerprint))
    metrics.RECEIVED.inc(outcome=receipt.status)
    return jsonify(status=receipt.status, id=receipt.id), 202


def _refuse(code: int, message: str, reason: str):
    metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=reason)
    return jsonify(error=message), code
