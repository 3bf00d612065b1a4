"""Prometheus metrics: counters and a histogram added up in Redis by every process, and
``read``, which gives ``/metrics`` (``app.metrics``) their stored totals at scrape time."""

from __future__ import annotations

import atexit
import bisect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from sync.settings import DEFAULT_PROGRAM
from sync.store.inbox import DeliveryStatus, ReceiptStatus
from sync.store.notifications import NotificationStatus

log = logging.getLogger(__name__)

PREFIX = "partnero_sync_"
#: Every metrics key in Redis starts with this; they have no TTL (counters only ever grow).
KEY_PREFIX = "partnero-sync:metrics:"

# The ``outcome`` of a delivery at the receiver is the intake's answer (queued, duplicate,
# ignored), or this:
REFUSED = "refused"
# ...and then the ``reason`` says why:
BAD_SIGNATURE = "bad_signature"
MISSING_SIGNATURE = "missing_signature"
MALFORMED_SIGNATURE = "malformed_signature"
MALFORMED_JSON = "malformed_json"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"
ERROR = "error"
#: The ``outcome`` of a processing attempt that hit a transient error (the others are the inbox's
#: statuses processed, ignored and failed).
RETRIED = "retried"
#: The label that says which program a series counts (the receiver's and the workers' counters).
PROGRAM = "program"
UPSERT = "upsert"
DELETE = "delete"

#: Label values are names we chose or Salesforce's error codes and object names; anything else
#: (never expected) is shown as "other", so a label can never carry a request's text.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,80}")


def _label(value: str | None) -> str:
    return value if isinstance(value, str) and _LABEL_VALUE.fullmatch(value) else "other"


class Recorder:
    """This process's increments, buffered in memory and added to Redis about once a second.

    Recording takes a lock and updates a dict: nothing waits on Redis. A daemon thread, started
    with the first increment (and again in a forked child), pushes the buffer in one MULTI/EXEC
    of HINCRBY/HINCRBYFLOAT; so does exit. What a failed push held stays buffered for the next
    one: one number per series, so the buffer stays small however long Redis is away, and past
    ``max_series`` series new ones are dropped.
    """

    def __init__(self, interval: float = 1.0, max_series: int = 5000):
        self.interval = interval
        self.max_series = max_series
        self.connection: redis.Redis | None = None
        self.dropped = 0
        self._pending: dict[tuple[str, str], int | float] = {}
        self._lock = threading.Lock()  # guards _pending; never held while talking to Redis
        self._push_lock = threading.Lock()  # one push at a time: the thread, a scrape, exit
        self._start_lock = threading.Lock()
        self._pid: int | None = None
        self._hooked = False
        self._failing = False

    def bind(self, connection: redis.Redis) -> None:
        """Push to ``connection`` from now on (what is buffered goes there too)."""
        self.connection = connection

    def add(self, increments: Iterable[tuple[str, str, int | float]]) -> None:
        """Buffer (Redis key, hash field, amount) increments."""
        self._ensure_pusher()
        with self._lock:
            self._merge(increments)

    def push(self) -> bool:
        """Add what is buffered to Redis now; False when it could not (it stays buffered)."""
        with self._push_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return True
            connection = self.connection
            try:
                if connection is None:  # nothing built this process's services yet
                    raise redis.ConnectionError("no Redis connection yet")
                with connection.pipeline(transaction=True) as pipe:
                    for (key, field), amount in pending.items():
                        if isinstance(amount, float):
                            pipe.hincrbyfloat(key, field, amount)
                        else:
                            pipe.hincrby(key, field, amount)
                    pipe.execute()
            except redis.RedisError as exc:
                # MULTI/EXEC: none of it was added (short of a reply lost after EXEC, when some
                # counts may arrive twice: metrics are best effort), so all of it waits.
                with self._lock:
                    self._merge((key, field, amount) for (key, field), amount in pending.items())
                if not self._failing:
                    log.warning("metrics: could not push to Redis, keeping them buffered: %s", type(exc).__name__)
                    self._failing = True
                return False
            if self._failing:
                log.info("metrics: pushed to Redis again")
                self._failing = False
            return True

    def clear(self) -> None:
        """Forget what is buffered (tests start each case from nothing)."""
        with self._push_lock, self._lock:
            self._pending = {}

    def _merge(self, increments: Iterable[tuple[str, str, int | float]]) -> None:
        pending = self._pending
        for key, field, amount in increments:
            if (key, field) in pending:
                pending[key, field] += amount
            elif len(pending) < self.max_series:
                pending[key, field] = amount
            else:
                if not self.dropped:
                    log.warning("metrics: more than %d series buffered; dropping new ones", self.max_series)
                self.dropped += 1

    def _ensure_pusher(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if not self._hooked:  # a forked child inherits both
                os.register_at_fork(after_in_child=self._forked)
                atexit.register(self.push)
                self._hooked = True
            threading.Thread(target=self._run, name="metrics-pusher", daemon=True).start()
            self._pid = os.getpid()

    def _forked(self) -> None:
        # The parent pushes what it had buffered, so the child starts from nothing, with new
        # locks (another thread may have held one at the fork) and, on first use, its own thread.
        self._lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pending = {}

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.push()
            except Exception:  # the pusher must outlive any surprise
                log.exception("metrics: push failed")


#: The recorder of this process: web and worker alike record into it.
recorder = Recorder()


@dataclass(frozen=True)
class Counter:
    """A counter family kept in Redis: one hash, one field per label set."""

    name: str  # after PREFIX, before _total
    help: str
    labels: tuple[str, ...] = ()
    #: Label sets shown from the start (0 until counted), so a rate sees their first increment.
    known: tuple[tuple[str, ...], ...] = ()

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.name}_total"

    def inc(self, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to the series of ``labels`` (a label not given is empty)."""
        unknown = set(labels) - set(self.labels)
        if unknown:
            raise TypeError(f"{self.name} has no label {sorted(unknown)}")
        if amount:
            field = ",".join(f"{name}={_label(labels.get(name, ''))}" for name in self.labels)
            recorder.add([(self.key, field, amount)])

    def family(self, stored: dict[str, str], programs: Sequence[str] = (DEFAULT_PROGRAM,)) -> CounterMetricFamily:
        """The family to export: what is stored, and the known series (of each of ``programs``,
        for a family with a ``program`` label) at 0 until counted."""
        known = self.known
        if PROGRAM in self.labels:
            at = self.labels.index(PROGRAM)
            known = tuple((*k[:at], p, *k[at:]) for p in programs for k in self.known)
        values = dict.fromkeys(known, 0.0) | self.series(stored)
        family = CounterMetricFamily(PREFIX + self.name, self.help, labels=self.labels)
        for labels, value in sorted(values.items()):
            family.add_metric(labels, value)
        return family

    def series(self, stored: dict[str, str]) -> dict[tuple[str, ...], float]:
        """The stored value of each series, by its label values (a field of a past layout, with
        other labels, is left out)."""
        values = {}
        for field, value in stored.items():
            labels = _label_values(field.split(",") if field else [], self.labels)
            if labels is not None:
                values[labels] = float(value)
        return values


def _label_values(pairs: list[str], labels: tuple[str, ...]) -> tuple[str, ...] | None:
    """The values of a stored field's ``name=value`` pairs when they name exactly ``labels``, in
    order; None for a field of a past layout (other labels)."""
    split = [pair.partition("=") for pair in pairs]
    return tuple(value for _, _, value in split) if [name for name, _, _ in split] == list(labels) else None


@dataclass(frozen=True)
class Histogram:
    """A histogram kept in Redis: one hash with a field per bucket (not cumulative), sum, count;
    with ``labels``, each field starts with its series' label values (``program=default,le=1``)."""

    name: str
    help: str
    buckets: tuple[float, ...]
    labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.name}"

    def observe(self, values: Iterable[float], **labels: str) -> None:
        """Add ``values`` to the series of ``labels`` (a label not given is empty)."""
        unknown = set(labels) - set(self.labels)
        if unknown:
            raise TypeError(f"{self.name} has no label {sorted(unknown)}")
        series = "".join(f"{name}={_label(labels.get(name, ''))}," for name in self.labels)
        fields: dict[str, int] = {}
        total, count = 0.0, 0
        for value in values:
            value = max(0.0, value)
            i = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= le
            le = floatToGoString(self.buckets[i]) if i < len(self.buckets) else "+Inf"
            fields[le] = fields.get(le, 0) + 1
            total += value
            count += 1
        if count:
            recorder.add([*((self.key, f"{series}le={le}", n) for le, n in fields.items()),
                          (self.key, f"{series}count", count), (self.key, f"{series}sum", total)])

    def family(self, stored: dict[str, str], programs: Iterable[str] = (DEFAULT_PROGRAM,)) -> HistogramMetricFamily:
        """The family to export: each stored series (a field of a past layout, with other labels,
        is left out); with a ``program`` label, each of ``programs`` from the start (empty until
        observed)."""
        by_series: dict[tuple[str, ...], dict[str, str]] = {}
        if self.labels == (PROGRAM,):
            by_series.update({(program,): {} for program in programs})
        for name, value in stored.items():
            *pairs, last = name.split(",")
            labels = _label_values(pairs, self.labels)
            if labels is not None:
                by_series.setdefault(labels, {})[last] = value
        if not self.labels:
            return HistogramMetricFamily(PREFIX + self.name, self.help, buckets=self._buckets(by_series.get((), {})),
                                         sum_value=float(by_series.get((), {}).get("sum", 0)))
        family = HistogramMetricFamily(PREFIX + self.name, self.help, labels=self.labels)
        for values, series in sorted(by_series.items()):
            family.add_metric(list(values), self._buckets(series), float(series.get("sum", 0)))
        return family

    def _buckets(self, series: dict[str, str]) -> list[tuple[str, int]]:
        """One series' cumulative buckets, from its stored (not cumulative) ones."""
        cumulative, buckets = 0, []
        for bound in (*self.buckets, math.inf):
            le = floatToGoString(bound)
            cumulative += int(series.get(f"le={le}", 0))
            buckets.append((le, cumulative))
        return buckets


RECEIVED = Counter(
    "deliveries_received",
    "Webhook deliveries the receiver answered, by outcome (queued, duplicate, ignored, refused); "
    "for refused ones, reason (bad_signature, missing_signature, malformed_signature, malformed_json, "
    "too_large, unavailable, error); by program (the URL's).",
    ("program", "outcome", "reason"),
    known=((ReceiptStatus.QUEUED, ""), (ReceiptStatus.DUPLICATE, ""), (ReceiptStatus.IGNORED, ""),
           *((REFUSED, reason) for reason in (BAD_SIGNATURE, MISSING_SIGNATURE, MALFORMED_SIGNATURE,
                                              MALFORMED_JSON, TOO_LARGE, UNAVAILABLE, ERROR))),
)
ATTEMPTS = Counter(
    "delivery_attempts",
    "Deliveries a worker job tried to process, by outcome (processed, ignored, failed, or retried "
    "later after a transient error), by program.",
    ("program", "outcome"),
    known=((DeliveryStatus.PROCESSED,), (DeliveryStatus.IGNORED,), (DeliveryStatus.FAILED,), (RETRIED,)),
)
SALESFORCE_CALLS = Counter(
    "salesforce_calls",
    "Requests made to Salesforce, whatever their result, by object (where the request names one) and kind: "
    "upsert (one sObject Collections call of up to 200 records), delete, describe, query, limits, create, "
    "login, userinfo, metadata, bulk_create, bulk_upload, bulk_close, bulk_status, bulk_results, other.",
    ("object", "kind"),
)
SALESFORCE_REFUSALS = Counter(
    "salesforce_refusals",
    "Records Salesforce did not accept, by program, object and error code (UNAVAILABLE: the whole call failed).",
    ("program", "object", "code"),
)
LAG = Histogram(
    "delivery_lag_seconds",
    "Seconds from a delivery's arrival at the receiver to the commit of its warehouse write, by program.",
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    ("program",),
)
SALESFORCE_LAG = Histogram(
    "salesforce_lag_seconds",
    "Seconds from the arrival of the oldest delivery behind a Salesforce record's unsent changes to "
    "Salesforce accepting the record, by program.",
    (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400),
    ("program",),
)
NOTIFICATIONS = Counter(
    "notifications",
    "Posts of the mappings' notifications (notify), by outcome (sent; retried: the endpoint did not take it, "
    "tried again later; failed: for good), by program.",
    ("program", "outcome"),
    known=((NotificationStatus.SENT,), (RETRIED,), (NotificationStatus.FAILED,)),
)
STORED = (RECEIVED, ATTEMPTS, SALESFORCE_CALLS, SALESFORCE_REFUSALS, LAG, SALESFORCE_LAG, NOTIFICATIONS)

def read(connection: redis.Redis) -> dict[str, dict[str, str]] | None:
    """Every stored family's hash, in one round trip (after pushing this process's buffer);
    None when Redis cannot be read."""
    recorder.push()
    try:
        with connection.pipeline(transaction=False) as pipe:
            for spec in STORED:
                pipe.hgetall(spec.key)
            hashes = pipe.execute()
    except redis.RedisError:
        return None
    return {spec.key: {_text(k): _text(v) for k, v in found.items()} for spec, found in zip(STORED, hashes)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
