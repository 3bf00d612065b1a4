"""The operator's alerts as stored: each occurrence of a condition and the message it is owed
(``operator_alerts``), and the one row that says which process sends them, a lease, and what was
sent last (``operator_alert_sender``).

Only counts, kinds, codes, Salesforce object names and times are stored here (``Concern.facts``),
never a payload's value or a webhook's URL; an error is how the endpoint answered ("HTTP 503").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.store.db import metadata, transaction
from sync.store.sqltypes import UTCDateTime


class Owed(StrEnum):
    """The message an alert is owed (``alerts.owed``)."""

    RAISE = "raise"
    REMIND = "remind"
    RESOLVE = "resolve"
    NONE = "none"


alerts = sa.Table(
    "operator_alerts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    #: The condition (``Concern.key``): one open row per key at a time.
    sa.Column("condition_key", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("program", sa.String(40)),
    #: ``Concern.facts`` as they were when it was raised, JSON.
    sa.Column("facts", sa.Text, nullable=False),
    sa.Column("raised_at", UTCDateTime(), nullable=False),
    sa.Column("resolved_at", UTCDateTime()),
    sa.Column("owed", sa.String(8), nullable=False, server_default=Owed.NONE.value),
    #: Tries of the owed message that failed, since the last one sent.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try_at", UTCDateTime()),
    sa.Column("last_error", sa.String(120)),
    sa.Column("failing_since", UTCDateTime()),
    sa.Column("last_sent_at", UTCDateTime()),
    sa.Index("ix_operator_alerts_resolved_key", "resolved_at", "condition_key"),
)

#: One row (``SENDER``): which process sends the alerts until when, and the last message sent.
alert_sender = sa.Table(
    "operator_alert_sender",
    metadata,
    sa.Column("name", sa.String(16), primary_key=True),
    sa.Column("holder", sa.String(120)),
    sa.Column("expires_at", UTCDateTime()),
    sa.Column("last_what", sa.String(200)),
    sa.Column("last_at", UTCDateTime()),
    sa.Column("last_outcome", sa.String(120)),
)

SENDER = "alerts"


@dataclass(frozen=True)
class Alert:
    """One occurrence of a condition, from raised to resolved, and the message it is owed."""

    id: int
    key: str
    kind: str
    program: str | None
    facts: dict[str, Any]
    raised_at: datetime
    resolved_at: datetime | None
    owed: Owed
    attempts: int
    next_try_at: datetime | None
    last_error: str | None
    failing_since: datetime | None
    last_sent_at: datetime | None


@dataclass(frozen=True)
class AlertSummary:
    """What ``status``, ``/ops`` and ``/metrics`` show of the alerts."""

    open: int
    #: Messages owed whose sending failed (0: the endpoint takes them).
    failing: int
    failing_since: datetime | None = None
    attempts: int = 0
    next_try_at: datetime | None = None
    last_error: str | None = None
    last_what: str | None = None
    last_at: datetime | None = None
    last_outcome: str | None = None
    #: The open alerts' keys, oldest first.
    open_keys: tuple[str, ...] = ()


def _alert(row) -> Alert:
    return Alert(row.id, row.condition_key, row.kind, row.program, json.loads(row.facts), row.raised_at,
                 row.resolved_at, Owed(row.owed), row.attempts, row.next_try_at, row.last_error, row.failing_since,
                 row.last_sent_at)


class AlertStore:
    """The alerts and their sender, in the service's database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def open_alerts(self) -> list[Alert]:
        """The conditions that stand (not resolved), oldest first."""
        t = alerts
        with self.engine.connect() as conn:
            return [_alert(r) for r in conn.execute(sa.select(t).where(t.c.resolved_at.is_(None)).order_by(t.c.id))]

    def raise_alert(self, key: str, kind: str, program: str | None, facts: dict[str, Any], now: datetime) -> None:
        """A condition appeared: a row that owes its first message."""
        with transaction(self.engine) as conn:
            conn.execute(alerts.insert().values(condition_key=key, kind=kind, program=program, facts=json.dumps(facts),
                                                raised_at=now, owed=Owed.RAISE, attempts=0))

    def resolve(self, alert: Alert, now: datetime) -> None:
        """The condition cleared: it owes a "resolved" message, unless nobody was told of it yet
        (its first message never got through), which then owes nothing."""
        owed = Owed.RESOLVE if alert.last_sent_at is not None else Owed.NONE
        with transaction(self.engine) as conn:
            conn.execute(alerts.update().where(alerts.c.id == alert.id)
                         .values(resolved_at=now, owed=owed, attempts=0, failing_since=None, last_error=None))

    def remind(self, alert: Alert, facts: dict[str, Any]) -> None:
        """The condition stands and was quiet long enough: it owes a reminder, told with ``facts``
        as they are now."""
        with transaction(self.engine) as conn:
            conn.execute(alerts.update().where(alerts.c.id == alert.id, alerts.c.owed == Owed.NONE)
                         .values(owed=Owed.REMIND, facts=json.dumps(facts)))

    def due(self, now: datetime) -> list[Alert]:
        """Alerts owed a message whose time has come, oldest first."""
        t = alerts
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.owed != Owed.NONE, sa.or_(
                t.c.next_try_at.is_(None), t.c.next_try_at <= now)).order_by(t.c.id))
            return [_alert(r) for r in rows]

    def sent(self, alert: Alert, now: datetime, what: str, outcome: str) -> None:
        """Its owed message got through: nothing more owed, recorded as the last one sent."""
        with transaction(self.engine) as conn:
            conn.execute(alerts.update().where(alerts.c.id == alert.id, alerts.c.owed == alert.owed).values(
                owed=Owed.NONE, attempts=0, next_try_at=None, last_error=None, failing_since=None, last_sent_at=now))
            _note(conn, what, now, outcome)

    def failed(self, alert: Alert, now: datetime, error: str, next_try_at: datetime) -> None:
        """Its owed message did not get through: tried again at ``next_try_at``, and so are the
        other owed messages (the endpoint is one: no message goes before it answers again)."""
        t = alerts
        with transaction(self.engine) as conn:
            conn.execute(t.update().where(t.c.id == alert.id).values(
                attempts=t.c.attempts + 1, last_error=error[:120], next_try_at=next_try_at,
                failing_since=sa.func.coalesce(t.c.failing_since, now)))
            conn.execute(t.update().where(t.c.owed != Owed.NONE, t.c.id != alert.id, sa.or_(
                t.c.next_try_at.is_(None), t.c.next_try_at < next_try_at)).values(next_try_at=next_try_at))

    def note(self, what: str, now: datetime, outcome: str) -> None:
        """Record a message sent outside the alerts (``partnero-sync alerts test``) as the last one."""
        with transaction(self.engine) as conn:
            _note(conn, what, now, outcome)

    def hold(self, holder: str, now: datetime, seconds: float) -> bool:
        """Take or keep the sender's lease for ``seconds``: True when ``holder`` holds it, which
        one process at a time does (a conditional UPDATE, or the INSERT of the row)."""
        t = alert_sender
        until = now + timedelta(seconds=seconds)
        with transaction(self.engine) as conn:
            free = sa.or_(t.c.holder == holder, t.c.holder.is_(None), t.c.expires_at < now)
            taken = conn.execute(t.update().where(t.c.name == SENDER, free).values(holder=holder, expires_at=until))
            if taken.rowcount == 1:
                return True
            if conn.execute(sa.select(t.c.name).where(t.c.name == SENDER)).first() is not None:
                return False
        try:
            with transaction(self.engine) as conn:
                conn.execute(t.insert().values(name=SENDER, holder=holder, expires_at=until))
        except sa.exc.IntegrityError:  # another process inserted it first: it holds the lease
            return False
        return True

    def release(self, holder: str) -> None:
        """Give the lease up (a process stopping), so another takes it at its next tick."""
        t = alert_sender
        with transaction(self.engine) as conn:
            conn.execute(t.update().where(t.c.name == SENDER, t.c.holder == holder).values(holder=None,
                                                                                          expires_at=None))

    def since(self, when: datetime) -> list[Alert]:
        """The alerts raised or resolved at ``when`` or later, oldest first (the charts mark them)."""
        t = alerts
        with self.engine.connect() as conn:
            return [_alert(r) for r in conn.execute(sa.select(t).where(
                sa.or_(t.c.raised_at >= when, t.c.resolved_at >= when)).order_by(t.c.raised_at, t.c.id))]

    def summary(self) -> AlertSummary:
        """The open alerts, the failing sends and the last message sent."""
        t = alerts
        with self.engine.connect() as conn:
            open_keys = tuple(conn.execute(sa.select(t.c.condition_key).where(t.c.resolved_at.is_(None))
                                           .order_by(t.c.id)).scalars())
            failing = conn.execute(sa.select(t).where(t.c.owed != Owed.NONE, t.c.attempts > 0)
                                   .order_by(t.c.failing_since, t.c.id)).all()
            last = conn.execute(sa.select(alert_sender).where(alert_sender.c.name == SENDER)).first()
        first = failing[0] if failing else None
        return AlertSummary(
            open=len(open_keys), failing=len(failing), open_keys=open_keys,
            failing_since=first.failing_since if first else None,
            attempts=max((r.attempts for r in failing), default=0),
            next_try_at=min((r.next_try_at for r in failing if r.next_try_at), default=None),
            last_error=first.last_error if first else None,
            last_what=last.last_what if last else None, last_at=last.last_at if last else None,
            last_outcome=last.last_outcome if last else None)


def _note(conn: Connection, what: str, now: datetime, outcome: str) -> None:
    """The sender's row says ``what`` was sent at ``now`` and how it went (created if absent)."""
    t = alert_sender
    values = {"last_what": what[:200], "last_at": now, "last_outcome": outcome[:120]}
    if conn.execute(t.update().where(t.c.name == SENDER).values(**values)).rowcount == 0:
        conn.execute(t.insert().values(name=SENDER, **values))
