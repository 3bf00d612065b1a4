"""The operator's alerts: a snapshot's concerns held against the open alerts (raised, reminded,
resolved), and the messages owed sent to ALERT_WEBHOOK_URL, from counts, kinds, codes and times only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sync.core import backoff
from sync.notify import webhook
from sync.ops.progress import duration
from sync.ops.snapshot import Kind, Snapshot
from sync.settings import Settings
from sync.store.alerts import Alert, AlertStore, Owed

log = logging.getLogger(__name__)

#: Where each kind is read from; a kind whose source could not be read is never resolved (not
#: seeing a condition is not seeing it clear). The rest are the database's.
REDIS_KINDS = frozenset({Kind.NO_WORKER, Kind.JOBS_FAILED, Kind.CRM_CALLS_REFUSED, Kind.CRM_SESSION,
                         Kind.API_BUDGET})
#: How each owed message begins.
HEADINGS = {Owed.RAISE: "Needs attention", Owed.REMIND: "Still needs attention", Owed.RESOLVE: "Resolved"}
#: What ``status`` and ``/ops`` name the test message.
TEST_WHAT = "test alert"

Post = Callable[..., int]


def source(kind: str) -> str:
    """The snapshot's source (``Snapshot.unavailable``'s names) a kind of concern is read from."""
    return "redis" if kind in REDIS_KINDS else "database"


def reconcile(store: AlertStore, snapshot: Snapshot, remind_after: timedelta) -> None:
    """Raise an alert for each new concern, resolve those gone (when their source was read), and
    owe a reminder for those that stood ``remind_after`` since their last message."""
    now = snapshot.taken_at
    concerns = {concern.key: concern for concern in snapshot.concerns()}
    standing = {alert.key: alert for alert in store.open_alerts()}
    for key, concern in concerns.items():
        if key not in standing:
            store.raise_alert(key, concern.kind, concern.program, dict(concern.facts), now)
    for key, alert in standing.items():
        if key not in concerns:
            if source(alert.kind) not in snapshot.unavailable:
                store.resolve(alert, now)
        elif alert.owed is Owed.NONE and alert.last_sent_at and now - alert.last_sent_at >= remind_after:
            store.remind(alert, dict(concerns[key].facts))


def describe(kind: str, program: str | None, facts: Mapping[str, Any]) -> str:
    """The condition in a few words, from its facts alone (never an error's text or a value)."""
    of = f" (program {program})" if program else ""
    said = {
        Kind.DELIVERIES_FAILED: lambda: f"{facts.get('deliveries')} deliveries failed{of}",
        Kind.BACKLOG_STUCK: lambda: f"the oldest pending delivery waited {duration(facts.get('waited_seconds', 0))}"
                                    f"{of}: is a worker running?",
        Kind.CRM_REFUSED: lambda: f"Salesforce refused {facts.get('records')} {facts.get('object')} records{of}"
                                  + _codes(facts.get("codes") or {}),
        Kind.CRM_CALLS_REFUSED: lambda: f"Salesforce refuses every call ({facts.get('code')})",
        Kind.CRM_SESSION: lambda: "the Salesforce session expired and cannot be renewed (INVALID_SESSION_ID)",
        Kind.NO_WORKER: lambda: f"{facts.get('jobs')} jobs wait and no worker listens on the queue",
        Kind.JOBS_FAILED: lambda: f"{facts.get('jobs')} jobs are in RQ's failed registry",
        Kind.BACKFILL: lambda: f"backfill #{facts.get('run')} {facts.get('state')} at {facts.get('entity')} "
                               f"page {facts.get('page')}{of}",
        Kind.API_BUDGET: lambda: f"Salesforce flushes paused at the API budget ({facts.get('used')} of "
                                 f"{facts.get('allowance')} daily requests, budget {facts.get('budget')})",
        Kind.ORG_MISFIT: lambda: f"the Salesforce org does not fit the mappings: {facts.get('problems')} problems"
                                 + (f" ({', '.join(facts.get('objects') or [])})" if facts.get("objects") else ""),
        Kind.UNSERVED: lambda: f"{facts.get('deliveries')} deliveries of programs no longer served wait",
        Kind.NOTIFICATIONS_FAILED: lambda: f"{facts.get('notifications')} of the mappings' notifications failed{of}",
    }.get(kind)
    return said() if said else f"{kind}{of}"


def _codes(codes: Mapping[str, int]) -> str:
    return ": " + ", ".join(f"{code} x{count}" for code, count in codes.items()) if codes else ""


def link(public_url: str | None, kind: str, program: str | None) -> str | None:
    """``/ops`` filtered to the condition, when PUBLIC_URL says where it is."""
    if not public_url:
        return None
    query = {"program": program} if program else {}
    if kind == Kind.DELIVERIES_FAILED:
        query["status"] = "failed"
    elif kind in (Kind.BACKLOG_STUCK, Kind.UNSERVED):
        query["status"] = "pending"
    return f"{public_url}/ops" + (f"?{urlencode(query)}" if query else "")


@dataclass(frozen=True)
class Message:
    """One alert's message: its title, its text, and the facts beside them (``json`` format)."""

    what: str
    title: str
    text: str
    facts: dict[str, Any]


def message(alert: Alert, settings: Settings, now: datetime) -> Message:
    """The message ``alert`` is owed."""
    heading = HEADINGS[alert.owed]
    said = describe(alert.kind, alert.program, alert.facts)
    when = f"since {_time(alert.raised_at, now)}"
    if alert.owed is Owed.RESOLVE and alert.resolved_at:
        when += f", cleared {_time(alert.resolved_at, now)}"
    url = link(settings.public_url, alert.kind, alert.program)
    text = f"[partnero-sync] {heading}: {said} {when}." + (f" {url}" if url else "")
    facts = {"state": alert.owed.value, "kind": alert.kind, "key": alert.key, "program": alert.program,
             "raised_at": alert.raised_at.isoformat(), "resolved_at": _iso(alert.resolved_at),
             "facts": alert.facts, "link": url}
    return Message(f"{heading.lower()}: {alert.key}", f"partnero-sync: {heading.lower()}", text, facts)


def _time(when: datetime, now: datetime) -> str:
    return f"{when:%H:%M} UTC" if when.date() == now.date() else f"{when:%Y-%m-%d %H:%M} UTC"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def deliver(settings: Settings, note: Message, post: Post = webhook.post) -> str:
    """Post ``note`` to ALERT_WEBHOOK_URL in ALERT_WEBHOOK_FORMAT; how it was taken ("HTTP 200").
    Raises ``webhook.WebhookFailed`` or ``webhook.WebhookRefused`` (never naming the URL)."""
    body = webhook.body(note.text, format=settings.alert_webhook_format, title=note.title, facts=note.facts)
    return f"HTTP {post(settings.alert_webhook_url, body, timeout=webhook.TIMEOUT)}"


def send_owed(store: AlertStore, settings: Settings, now: datetime, holding: Callable[[], bool],
              post: Post = webhook.post) -> int:
    """Send the messages owed and due, oldest first, each recorded as it goes (a restart repeats
    none and loses none); the first that fails stops the round and sets when all are tried
    again. ``holding`` says whether this process still holds the sender's lease. Returns how many
    got through."""
    sent = 0
    for alert in store.due(now):
        if not holding():
            break
        note = message(alert, settings, now)
        try:
            outcome = deliver(settings, note, post)
        except (webhook.WebhookFailed, webhook.WebhookRefused) as exc:
            store.failed(alert, now, str(exc), now + timedelta(seconds=retry_in(exc, alert.attempts)))
            store.note(note.what, now, f"failed: {exc}")
            log.warning("alert not sent (%s), attempt %d: %s", alert.key, alert.attempts + 1, exc)
            break
        store.sent(alert, now, note.what, f"sent ({outcome})")
        sent += 1
    return sent


def retry_in(exc: Exception, attempts: int) -> float:
    """Seconds until the next try after ``exc``: what the endpoint asked for, else the backoff; a
    refusal at the slow end, in case a person fixes the endpoint."""
    if isinstance(exc, webhook.WebhookRefused):
        return backoff.delay(backoff.ALERT_DELAYS, len(backoff.ALERT_DELAYS) - 1)
    asked = getattr(exc, "retry_after", None)
    return asked if asked is not None else backoff.delay(backoff.ALERT_DELAYS, attempts)


def send_test(store: AlertStore, settings: Settings, now: datetime, post: Post = webhook.post) -> tuple[bool, str]:
    """``partnero-sync alerts test``: a test message now, recorded as the last one sent; whether it
    got through, and how."""
    url = link(settings.public_url, "", None)
    note = Message(TEST_WHAT, "partnero-sync: test alert",
                   "[partnero-sync] Test alert: alerts reach this channel." + (f" {url}" if url else ""),
                   {"state": "test", "link": url})
    try:
        outcome, ok = f"sent ({deliver(settings, note, post)})", True
    except (webhook.WebhookFailed, webhook.WebhookRefused) as exc:
        outcome, ok = f"failed: {exc}", False
    store.note(TEST_WHAT, now, outcome)
    return ok, outcome
