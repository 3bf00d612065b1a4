"""Webhook subscriptions: which one to create or update for our receiver, and how to show them.

The decisions are plain functions of values; ``register`` and ``delete`` make the calls through a
``PartneroApi`` (one program's: subscriptions, like everything in Partnero, belong to a program).
A subscription's ``signature`` (its signing secret) is never part of what is shown, only returned
by ``register`` for the operator who asked.

Each program's deliveries come to a URL of their own, which is how the receiver tells whose they
are: ``/webhooks/partnero/<name>`` for a program PARTNERO_PROGRAMS names, ``/webhooks/partnero``
for the one program (``default``) of a deployment that names none (``receiver_url``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sync.core.errors import SyncError
from sync.ops.terminal import safe
from sync.partnero.api import PartneroApi, PartneroRefused
from sync.settings import Program

#: Where the receiver takes deliveries (app/webhooks.py): a named program's at RECEIVER_PATH/<name>.
RECEIVER_PATH = "/webhooks/partnero"
#: The receiver's path, and a program's name after it, at the end of a URL given for it.
_RECEIVER_AT_END = re.compile(re.escape(RECEIVER_PATH) + r"(/[^/]*)?/*$")
DEFAULT_NAME = "partnero-sync"
#: What ``list --json`` shows of a subscription.
SHOWN = ("key", "name", "url", "is_active", "events")


@dataclass(frozen=True)
class Registration:
    """What ``register`` did: ``action`` is "created" or "updated"."""

    action: str
    webhook: dict
    #: The signing secret, when Partnero's answer carried it.
    secret: str | None
    #: Keys of other subscriptions that also send to this URL (left as they are).
    others: tuple[str, ...] = ()
    #: Event types Partnero refused to subscribe to (it does not offer them to this program).
    refused: tuple[str, ...] = ()


def check_url(url: str) -> list[str]:
    """Warnings about the web process's public URL; ``ValueError`` when it is not an http(s) URL
    with a host, or it has a query or a fragment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("the URL must look like https://your-app.example.com (the web process's public URL)")
    warnings = []
    if parts.scheme != "https":
        warnings.append("the URL is not https: deliveries, and the partner and customer data in them, would "
                        "travel unencrypted")
    return warnings


def receiver_url(url: str, program: Program) -> str:
    """Where ``program``'s deliveries are to be sent, given the web process's public URL ``url``
    (a path in front is kept, for an app served under a prefix). A ``url`` that already ends in
    the receiver's path (with a program's name after it, or not) is taken as the receiver of the
    public URL before it, so ``https://app.example.com/webhooks/partnero`` and
    ``https://app.example.com`` give the same."""
    parts = urlsplit(url.strip())
    prefix = _RECEIVER_AT_END.sub("", parts.path).rstrip("/")
    own = f"/{program.name}" if program.named else ""
    return f"{parts.scheme}://{parts.netloc}{prefix}{RECEIVER_PATH}{own}"


def same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same receiver (scheme and host in any case, a trailing slash)."""
    def norm(url: str) -> tuple[str, str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query

    return norm(a) == norm(b)


def plan(hooks: Sequence[dict], url: str) -> tuple[dict | None, tuple[str, ...]]:
    """The subscription to update for ``url`` (the first that sends there; None: create one) and
    the keys of any others that also do."""
    matching = [h for h in hooks if isinstance(h.get("url"), str) and same_url(h["url"], url)]
    if not matching:
        return None, ()
    return matching[0], tuple(str(h.get("key")) for h in matching[1:])


def refused_events(fields: Sequence[str], events: Sequence[str]) -> tuple[str, ...]:
    """The events a 422 refused one by one (Laravel names them ``events.N``)."""
    picked = {int(f.split(".", 1)[1]) for f in fields if re.fullmatch(r"events\.\d+", f)}
    return tuple(events[i] for i in sorted(picked) if i < len(events))


def register(api: PartneroApi, url: str, events: Sequence[str], name: str | None = None) -> Registration:
    """Subscribe ``url`` to exactly ``events``: update the subscription that already sends there,
    or create one. Event types Partnero refuses one by one (not offered to this program) are left
    out, once, and reported in ``refused``."""
    if not events:
        raise SyncError("the mapping files handle no event types: there is nothing to subscribe to")
    existing, others = plan(api.webhooks(), url)

    def send(wanted: list[str]) -> dict:
        if existing is None:
            return api.create_webhook(name or DEFAULT_NAME, url, wanted)
        return api.update_webhook(str(existing["key"]), name or existing.get("name") or DEFAULT_NAME, url, wanted)

    wanted, refused = list(events), ()
    try:
        webhook = send(wanted)
    except PartneroRefused as exc:
        refused = refused_events(exc.fields, wanted) if exc.status == 422 else ()
        if not refused or len(refused) == len(wanted):
            raise
        wanted = [e for e in wanted if e not in refused]
        webhook = send(wanted)
    secret = webhook.get("signature")
    return Registration("created" if existing is None else "updated", webhook,
                        secret if isinstance(secret, str) and secret else None, others, refused)


class NoSuchWebhook(SyncError):
    """The program has no subscription with the key asked for."""


def delete(api: PartneroApi, key: str) -> None:
    """Delete a subscription; ``NoSuchWebhook`` when the program has none with that key."""
    try:
        api.delete_webhook(key)
    except PartneroRefused as exc:
        if exc.status == 404:
            whose = f"program {api.program}" if api.named else "this program"
            raise NoSuchWebhook(f"Partnero has no webhook with key {key!r} in {whose} "
                                "(`partnero-sync webhooks list` shows them)") from exc
        raise


def shown(hook: dict) -> dict[str, Any]:
    """What may be shown of a subscription: everything but its signing secret."""
    return {name: hook.get(name) for name in SHOWN}


def render(hooks: Sequence[dict]) -> str:
    """A table of subscriptions: key, name, URL, active, events."""
    if not hooks:
        return "no webhooks: `partnero-sync webhooks register --url https://your-app.example.com` subscribes one"
    rows = [("KEY", "NAME", "URL", "ACTIVE", "EVENTS")]
    for hook in hooks:
        events = hook.get("events")
        active = hook.get("is_active")
        rows.append((
            safe(hook.get("key") or "-"), safe(hook.get("name") or "-"), safe(hook.get("url") or "-"),
            "-" if active is None else ("yes" if active else "no"),
            ", ".join(map(safe, events)) if isinstance(events, list) else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[4]]).rstrip()
                     for row in rows)
