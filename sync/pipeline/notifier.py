"""Posting the mappings' notifications after their delivery's commit: due rows claimed, posted
through ``sync.notify.webhook``, each outcome recorded on its row (retried on the delivery backoff)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import requests
from sqlalchemy.engine import Engine

from sync.core import backoff
from sync.core.clock import Clock
from sync.notify import webhook
from sync.ops import metrics
from sync.store import notifications
from sync.store.notifications import Claimed, NotificationStatus

log = logging.getLogger(__name__)

#: Posts of one row: the first, then one per step of the delivery backoff (about four hours).
MAX_ATTEMPTS = len(backoff.DELIVERY_DELAYS) + 1


@dataclass
class Sent:
    """What a run of the notifier did: rows by outcome (sent, failed, retried)."""

    outcomes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (f"notifications: {self.outcomes[NotificationStatus.SENT]} sent, "
                f"{self.outcomes[metrics.RETRIED]} to retry, {self.outcomes[NotificationStatus.FAILED]} failed")


@dataclass
class Notifier:
    engine: Engine
    #: The URLs by variable name (``Settings.webhook_urls``): looked up at each post, so a fixed
    #: variable serves the rows still waiting once the worker restarts with it.
    webhook_urls: Mapping[str, str]
    clock: Clock
    session: requests.Session | None = None

    def send_due(self, should_stop: Callable[[], bool] = lambda: False) -> Sent:
        """Post every due row, a claim at a time, until none is due (or ``should_stop``)."""
        done = Sent()
        while not should_stop():
            claimed = notifications.claim(self.engine, self.clock())
            if not claimed:
                break
            for row in claimed:
                outcome = self.send(row)
                done.outcomes[outcome] += 1
                metrics.NOTIFICATIONS.inc(outcome=outcome, program=row.program)
        return done

    def send(self, row: Claimed) -> str:
        """Post one claimed row and record what became of it: sent, retried (``metrics.RETRIED``) or failed."""
        where = {"inbox_id": row.inbox_id, "program": row.program}
        url = self.webhook_urls.get(row.url_variable)
        if not url:
            reason = f"{row.url_variable} is not set: set it to the webhook's URL (the message was not sent)"
            notifications.not_sent(self.engine, row.id, reason, None)
            log.error("notification %s failed: %s", row.name, reason, extra=where)
            return NotificationStatus.FAILED
        try:
            webhook.post(url, webhook.body(row.text, format=row.format), session=self.session)
        except (webhook.WebhookFailed, webhook.WebhookRefused) as exc:
            return self._not_sent(row, str(exc), getattr(exc, "retry_after", None), where)
        notifications.sent(self.engine, row.id, self.clock())
        log.info("notification %s sent", row.name, extra=where)
        return NotificationStatus.SENT

    def _not_sent(self, row: Claimed, reason: str, retry_after: float | None, where: dict) -> str:
        """A post the endpoint did not take (its answer, never the URL): tried again on the
        delivery backoff, no sooner than its Retry-After; failed once the backoff is spent. A
        refusal (4xx) is retried too: a person may fix the endpoint or the variable meanwhile."""
        if row.attempts >= MAX_ATTEMPTS:
            reason = f"{reason}; still not taken after {row.attempts} attempts"
            notifications.not_sent(self.engine, row.id, reason, None)
            log.error("notification %s failed: %s", row.name, reason, extra=where)
            return NotificationStatus.FAILED
        wait = max(backoff.delay(backoff.DELIVERY_DELAYS, row.attempts - 1), retry_after or 0)
        notifications.not_sent(self.engine, row.id, reason, self.clock() + timedelta(seconds=wait))
        log.warning("notification %s not taken: %s; tried again in %.0fs", row.name, reason, wait, extra=where)
        return metrics.RETRIED
