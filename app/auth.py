"""The guard for the operator's pages (``/rq``, ``/ops``, ``/metrics``): HTTP Basic auth against
RQ_DASHBOARD_USERNAME / RQ_DASHBOARD_PASSWORD, compared in constant time, and the CSRF checks
for the pages' buttons."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import urlsplit

from flask import Request, Response, jsonify

from sync.settings import DashboardSettings

REALM = "partnero-sync"


def authorized(settings: DashboardSettings, request: Request) -> bool:
    """Whether ``request`` carries the configured credentials (never true when none are set)."""
    if not settings.enabled:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, sep, password = decoded.partition(":")
    if not sep:
        return False
    # Both compared, always: the time taken tells nothing about which one was wrong.
    user_ok = hmac.compare_digest(username.encode(), settings.username.encode())
    password_ok = hmac.compare_digest(password.encode(), settings.password.encode())
    return user_ok and password_ok


def challenge() -> Response:
    """401 with the header that makes a browser ask for the credentials."""
    response = jsonify(error="authentication required")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
    return response


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from one of our own pages.

    Browsers send ``Origin`` (or at least ``Referer``) with a POST; a form on another site that
    the browser would send our cached Basic credentials with carries that site's origin.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" == request.host_url.rstrip("/")


def secret_key(settings: DashboardSettings, webhook_secrets: tuple[str, ...]) -> bytes:
    """A key for signing the pages' CSRF tokens, the same in every process and on every host,
    and unguessable without the credentials; derived, so there is no extra variable to set."""
    material = "\0".join([settings.username or "", settings.password or "", *webhook_secrets])
    return hmac.new(b"partnero-sync ops tokens", material.encode(), hashlib.sha256).digest()
