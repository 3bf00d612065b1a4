"""Verifying Partnero's webhook signature: pure functions of the body, the headers and secrets.

Partnero signs the raw body bytes with HMAC-SHA256, keyed by the webhook's signing secret taken
as a plain UTF-8 string, and sends the lowercase hex digest in ``Signature`` (an older guide says
``X-Partnero-Signature``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from enum import Enum

SIGNATURE_HEADERS = ("Signature", "X-Partnero-Signature")
_HEX = frozenset("0123456789abcdef")


class Verdict(Enum):
    OK = "ok"
    MISSING = "missing signature"
    MALFORMED = "malformed signature"
    MISMATCH = "signature does not match"

    @property
    def ok(self) -> bool:
        return self is Verdict.OK


def sign(body: bytes, secret: str) -> str:
    """The signature Partnero sends for ``body``: lowercase hex HMAC-SHA256."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def header_values(headers: Mapping[str, str]) -> list[str]:
    """Every signature value present; header names match in any case.

    A header sent twice reaches the app as one value joined with commas (proxies repeat headers,
    and servers join repeats so), so each value is split at its commas: a hex digest has none.
    """
    wanted = {name.lower() for name in SIGNATURE_HEADERS}
    return [part for name, value in headers.items() if name.lower() in wanted for part in value.split(",")]


def verify(body: bytes, candidates: Iterable[str], secrets: Iterable[str]) -> Verdict:
    """Whether any candidate signature matches ``body`` under any of ``secrets``.

    Each comparison is constant-time, and every secret is tried, so timing reveals neither which
    secret matched nor how much of a digest was right.
    """
    digests = [_normalize(c) for c in candidates]
    if not digests:
        return Verdict.MISSING
    wellformed = [d for d in digests if d is not None]
    if not wellformed:
        return Verdict.MALFORMED
    matched = False
    for secret in secrets:
        expected = sign(body, secret).encode("ascii")
        for digest in wellformed:
            matched |= hmac.compare_digest(expected, digest)
    return Verdict.OK if matched else Verdict.MISMATCH


def _normalize(value: str) -> bytes | None:
    """The digest as lowercase ASCII hex bytes, or None when it cannot be a SHA-256 hex digest."""
    digest = value.strip().lower()
    if len(digest) != 64 or not _HEX.issuperset(digest):
        return None
    return digest.encode("ascii")
