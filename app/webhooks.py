"""``POST /webhooks/partnero/<program>`` (and ``/webhooks/partnero`` for program ``default``):
verify with that program's secrets, store durably in the inbox (the intake then wakes a worker),
answer 202."""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.server.gunicorn_worker import RECEIVED_AT
from sync.core import envelope, signature
from sync.core.envelope import MalformedDelivery
from sync.core.errors import TransientError
from sync.mapping import identify
from sync.ops import logs, metrics
from sync.pipeline.intake import Intake
from sync.services import Services
from sync.settings import DEFAULT_PROGRAM, Program
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
def receive_default():
    """The URL of a deployment without PARTNERO_PROGRAMS: program ``default``'s (two endpoints,
    so neither URL redirects to the other: a webhook's URL is the one registered)."""
    return receive(DEFAULT_PROGRAM)


@bp.post("/webhooks/partnero/<name>")
def receive(name: str):
    services = current_app.extensions["partnero"]
    program = services.settings.program(name)
    if program is None:
        # The same answer as any path the app does not serve: nothing says which programs exist.
        abort(404)
    # Every answer is counted once: here those raised as exceptions, in _receive the others.
    try:
        return _accept(_read_body(services.settings.max_body_bytes), program, services,
                       current_app.extensions["partnero.intake"])
    except RequestEntityTooLarge:
        metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=metrics.TOO_LARGE, program=program.name)
        raise
    except Exception:  # answered by the app's error handlers (a 500, a client gone mid-body)
        metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=metrics.ERROR, program=program.name)
        raise


def _read_body(limit: int) -> bytes:
    """The request's raw bytes, exactly as signed; too large a body is refused unread, or as soon
    as it passes the limit (a chunked one is cut one byte past it)."""
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()  # from the header alone: the body is never read
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _accept(body: bytes, program: Program, services: Services, intake: Intake):
    """Verify ``body`` with ``program``'s secrets only, read its envelope, and store it through
    ``intake`` as ``program``'s: the answer to send."""
    verdict = signature.verify(body, signature.header_values(request.headers), program.webhook_secrets)
    if not verdict.ok:
        log.warning("refused delivery for program %s from %s: %s", program.name, request.remote_addr, verdict.value)
        return _refuse(401, verdict.value, _SIGNATURE_REASONS[verdict], program)

    try:
        document, event = envelope.read_event(body)
    except MalformedDelivery as exc:
        log.warning("refused signed delivery for program %s: %s", program.name, exc)
        return _refuse(400, str(exc), metrics.MALFORMED_JSON, program)

    mapping = services.mappings_for(program.name).for_event(event)
    delivery = Delivery(
        body=body,
        event_type=event,
        status=DeliveryStatus.PENDING if mapping is not None else DeliveryStatus.IGNORED,
        entity_id=identify(mapping, document, program=program.name) if mapping is not None else None,
        program=program.name,
    )
    try:
        receipt = intake.submit(delivery, request.environ.get(RECEIVED_AT))
    except TransientError as exc:
        log.error("could not store a delivery, answering 503: %s", exc,
                  extra=logs.delivery_fields(None, event, delivery.fingerprint, program.name))
        response = _refuse(503, "could not store the delivery; try again", metrics.UNAVAILABLE, program)
        response[0].headers["Retry-After"] = "30"
        return response
    log.info("delivery %s", receipt.status,
             extra=logs.delivery_fields(receipt.id, event, delivery.fingerprint, program.name))
    metrics.RECEIVED.inc(outcome=receipt.status, program=program.name)
    return jsonify(status=receipt.status, id=receipt.id), 202


def _refuse(code: int, message: str, reason: str, program: Program):
    metrics.RECEIVED.inc(outcome=metrics.REFUSED, reason=reason, program=program.name)
    return jsonify(error=message), code
