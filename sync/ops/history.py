"""The history behind ``/ops``'s charts: a sample per program per minute, taken from a snapshot
(``History.record``), and the series a chart draws (``History.series``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import redis
from sqlalchemy.engine import Engine

from sync.core.clock import Clock
from sync.ops import metrics
from sync.ops.charts import Point, Series, Window
from sync.ops.snapshot import ProgramFigures, Snapshot
from sync.store.db import transaction
from sync.store.history import HistoryStore, Sample
from sync.store.inbox import DeliveryStatus, ReceiptStatus
from sync.store.outbox import Outbox

MINUTE = timedelta(minutes=1)
COUNTS = ("received", "processed", "failed")
GAUGES = ("oldest_pending_age", "crm_backlog", "crm_lag", "crm_refused")
#: Which series of the metrics' counters each count adds up: received (stored as new, to apply or
#: ignored), processed (applied or ignored by a worker) and failed (given up on).
_COUNTED = {
    "received": (metrics.RECEIVED, {ReceiptStatus.QUEUED, ReceiptStatus.IGNORED}),
    "processed": (metrics.ATTEMPTS, {DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED}),
    "failed": (metrics.ATTEMPTS, {DeliveryStatus.FAILED}),
}


class History:
    """Samples written every minute by the monitor holding the sender's lease (``sync.ops.monitor``), read by ``/ops``."""

    def __init__(self, engine: Engine, clock: Clock, connection: redis.Redis | None = None,
                 store: HistoryStore | None = None):
        self.engine = engine
        self.clock = clock
        #: Where the metrics' counters are (None: counts are not sampled, gauges are).
        self.connection = connection
        self.store = store or HistoryStore(engine)

    def __call__(self, snapshot: Snapshot) -> None:
        self.record(snapshot)

    def record(self, snapshot: Snapshot) -> None:
        """Write the minute of ``snapshot.taken_at``: a sample per program it has figures of.

        A minute's counts are the counters' growth since the sample of the minute before; with
        no such sample (a minute missed) or a counter that went down (Redis emptied), they are
        not known, and the chart shows a gap rather than a spike. Nothing is written when the
        database could not be read."""
        if "database" in snapshot.unavailable or not snapshot.programs:
            return
        at = snapshot.taken_at.replace(second=0, microsecond=0)
        totals = self._totals()
        before = self.store.at(at - MINUTE)
        waits = self._waits() if snapshot.crm_enabled else {}
        zero = dict.fromkeys(COUNTS, 0)  # a program nothing was counted for yet
        self.store.write([_sample(name, at, figures, totals.get(name, zero) if totals is not None else None,
                                  before.get(name), waits.get(name), snapshot.taken_at)
                          for name, figures in snapshot.programs.items()])

    def series(self, program: str | None, window: Window) -> Series:
        """The points of ``window`` up to this minute, of ``program`` (None: every program's added
        up, ages at the oldest): counts added over each step, gauges at their highest in it."""
        end = self.clock().replace(second=0, microsecond=0) + MINUTE
        start = end - window.span
        samples = self.store.read(program, start, end)
        return Series(window, start, end, points(samples, start, end, window.step))

    def _totals(self) -> dict[str, dict[str, int]] | None:
        """Each program's counters now (None: Redis could not be read)."""
        if self.connection is None:
            return None
        stored = metrics.read(self.connection)
        if stored is None:
            return None
        totals: dict[str, dict[str, int]] = {}
        for count, (counter, outcomes) in _COUNTED.items():
            at = counter.labels.index("outcome")
            for labels, value in counter.series(stored[counter.key]).items():
                if labels[at] in outcomes:
                    program = totals.setdefault(labels[counter.labels.index(metrics.PROGRAM)], dict.fromkeys(COUNTS, 0))
                    program[count] += int(value)
        return totals

    def _waits(self) -> dict[str, datetime]:
        with transaction(self.engine) as conn:
            return Outbox().oldest_waits(conn)


def _sample(program: str, at: datetime, figures: ProgramFigures, totals: dict[str, int] | None,
            before: Sample | None, waiting_since: datetime | None, now: datetime) -> Sample:
    """One program's sample: counts from its counters' growth, gauges from its figures."""
    counts = dict.fromkeys(COUNTS)
    if totals is not None and before is not None and before.received_total is not None:
        grown = {c: totals[c] - getattr(before, f"{c}_total") for c in COUNTS}
        if min(grown.values()) >= 0:
            counts = grown
    crm = figures.crm_enabled
    return Sample(
        program=program, at=at, **counts,
        **({f"{c}_total": totals[c] for c in COUNTS} if totals is not None else {}),
        # Nothing pending is an age of 0 (a gap would say "not known").
        oldest_pending_age=_seconds(figures.oldest_pending_age or 0) if figures.inbox is not None else None,
        crm_backlog=figures.crm_backlog if crm else None,
        crm_lag=(_seconds((now - waiting_since).total_seconds()) if waiting_since else 0) if crm else None,
        crm_refused=figures.crm_refused if crm else None,
    )


def points(samples: Sequence[Sample], start: datetime, end: datetime, step: timedelta) -> list[Point]:
    """``samples`` as one point per ``step`` from ``start`` to ``end``: each minute's programs
    added up (ages: the oldest), then each step's minutes: counts as their average per minute
    over the minutes that have them (a step half sampled does not dip), gauges at their highest;
    None where no sample has the value."""
    minutes: dict[datetime, dict[str, int | None]] = {}
    for sample in samples:
        minute = minutes.setdefault(sample.at, dict.fromkeys(COUNTS + GAUGES))
        for name in COUNTS + GAUGES:
            minute[name] = _combine(name in _AGES, minute[name], getattr(sample, name))
    count = (end - start) // step
    buckets: list[dict[str, int | None]] = [dict.fromkeys(COUNTS + GAUGES) for _ in range(count)]
    counted: list[dict[str, int]] = [dict.fromkeys(COUNTS, 0) for _ in range(count)]
    for at, minute in minutes.items():
        i = (at - start) // step  # floor: a minute just before the window is not in its first step
        if 0 <= i < count:
            for name in COUNTS + GAUGES:
                buckets[i][name] = _combine(name in GAUGES, buckets[i][name], minute[name])
            for name in COUNTS:
                counted[i][name] += minute[name] is not None
    return [Point(start + i * step, **_per_minute(bucket, counted[i])) for i, bucket in enumerate(buckets)]


def _per_minute(bucket: dict[str, int | None], minutes: dict[str, int]) -> dict[str, float | None]:
    """A step's counts as their average per minute (whole numbers stay whole)."""
    averaged = dict(bucket)
    for name in COUNTS:
        if bucket[name] is not None and minutes[name] > 1:
            total, n = bucket[name], minutes[name]
            averaged[name] = total // n if total % n == 0 else round(total / n, 1)
    return averaged


#: Gauges that are ages: over programs, the oldest is the one shown (not their sum).
_AGES = ("oldest_pending_age", "crm_lag")


def _combine(highest: bool, held: int | None, value: int | None) -> int | None:
    """``held`` and ``value`` as one: the higher or the sum; None counts as nothing."""
    if value is None or held is None:
        return held if value is None else value
    return max(held, value) if highest else held + value


def _seconds(value: float | None) -> int | None:
    return round(value) if value is not None else None
