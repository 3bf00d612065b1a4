"""How long to wait before trying again: the one retry policy for deliveries, flushes, records and
calls to Partnero's API and the operator's alerts.

Exponential with jitter (up to a fifth more), so retries of many failures spread out. docs/pipeline.md
(Retries) states the deliveries' schedule.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: A batch of deliveries that hit a passing error (the database or Redis away): about four hours
#: of retries; after that its rows stay pending and the sweeper brings them back (never failed).
DELIVERY_DELAYS = (10, 30, 90, 300, 900, 1800, 3600, 3600, 3600)
#: A flush that could not reach Salesforce (an outage, an API limit): quick to notice that it is
#: back, and never more than about one probe call a minute while it is not.
FLUSH_DELAYS = (5, 10, 20, 40, 50)  # 50 s and its jitter: a probe at least once a minute
#: One record Salesforce refused for a passing reason (UNABLE_TO_LOCK_ROW), or whose parent it
#: does not have yet: tried again by itself, less and less often.
RECORD_DELAYS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: Records of a call Salesforce refused as a whole (a field the org lacks, no access, a session
#: that cannot be renewed): a person has to act, so a slow probe in case they did.
REFUSAL_DELAYS = (3600, 2 * 3600, 4 * 3600, 6 * 3600)
#: A Bulk API 2.0 job Salesforce is processing: how long until a flush asks how far it got
#: (each look is one API call; a job of 100,000 records takes minutes).
BULK_POLL_DELAYS = (5, 10, 20, 30, 60)
#: Records that come in a flood (a backfill, ``reconcile --fix``) gather this long before they go:
#: batch work asks for its flush this far out, and an object's next Bulk API 2.0 job starts no
#: sooner than this after its last one, so a flood goes in a few large jobs, not many small ones.
GATHER_SECONDS = 60
#: Flushes paused at the Salesforce API budget: the next look (one ``GET limits`` call) comes
#: after this long, again and again until the org's usage has fallen under the budget.
BUDGET_PROBE_DELAYS = (300,)
#: A call to Partnero's REST API that met a 5xx, a time-out or a lost connection, waited for in
#: the calling process: a few seconds in all, then the caller gets the error.
API_DELAYS = (1, 2, 4, 8)
#: The longest ``Retry-After`` a 429 from Partnero is obeyed for (Laravel's limiter counts per
#: minute, so a minute is what it asks at most); a longer one waits this long.
API_RETRY_AFTER_CAP = 90

#: An operator's alert the endpoint could not take (5xx, 429, a time-out): tried again soon, then
#: every half hour; one it refused (a 4xx: the URL or the endpoint needs a person) waits the last.
ALERT_DELAYS = (30, 60, 120, 300, 600, 1800)


#: The longest ``Retry-After`` an incoming webhook (an alert, a notification) is obeyed for; an
#: endpoint asking for more is asked again after this.
WEBHOOK_RETRY_AFTER_CAP = 3600


def retry_after(value: str | None, now: datetime, cap: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date, as of ``now``), at most
    ``cap``; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), float(cap))


def delay(schedule: tuple[int, ...], attempt: int) -> float:
    """Seconds to wait after ``attempt`` failures (0: the first retry), by ``schedule``."""
    base = schedule[min(max(attempt, 0), len(schedule) - 1)]
    return base + random.uniform(0, base / 5)
