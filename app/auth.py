"""The guard for the operator's pages (``/rq``, ``/ops``, ``/metrics``): HTTP Basic auth against
RQ_DASHBOARD_USERNAME / RQ_DASHBOARD_PASSWORD, compared in constant time, the CSRF checks
for the pages' buttons, and the session cookie's flags."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import urlsplit

import flask
from flask import Request, Response, jsonify
from flask.sessions import SecureCookieSessionInterface

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
    the browser would send our cached Basic credentials with carries that site's origin. Ours is
    the scheme and host the browser used: behind a TLS-terminating router, ``https`` as the
    router says it in ``X-Forwarded-Proto`` (believed from the peers FORWARDED_ALLOW_IPS names,
    see ``app.server.gunicorn_config``).
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" == request.host_url.rstrip("/")


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed session cookie, marked ``Secure`` whenever the browser reached us over
    https, so it is never sent back over plain http."""

    def get_cookie_secure(self, app) -> bool:
        return (flask.has_request_context() and flask.request.is_secure) or super().get_cookie_secure(app)


def secret_key(settings: DashboardSettings, webhook_secrets: tuple[str, ...]) -> bytes:
    """A key for signing the pages' CSRF tokens, the same in every process and on every host,
    and unguessable without the credentials; derived, so there is no extra variable to set."""
    material = "\0".join([settings.username or "", settings.password or "", *webhook_secrets])
    return hmac.new(b"partnero-sync ops tokens", material.encode(), hashlib.sha256).digest()
