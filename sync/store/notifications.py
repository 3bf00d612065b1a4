"""The ``notifications`` table: each message a delivery's mapping sends (``notify``), written with the
delivery's warehouse rows, then posted by a worker. One row per (program, delivery, entry name):
a replay or requeue of the delivery never sends it twice. Its text stays in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.mapping import Notice
from sync.settings import DEFAULT_PROGRAM
from sync.store.db import insert_ignore, metadata, transaction
from sync.store.sqltypes import PROGRAM, UTCDateTime


class NotificationStatus(StrEnum):
    PENDING = "pending"  # to be posted (again) at next_try_at
    SENT = "sent"
    FAILED = "failed"  # its text could not be made, its URL variable is unset, or its retries are spent


notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    #: The delivery (webhook_events.id) that sends it.
    sa.Column("inbox_id", sa.BigInteger, nullable=False),
    #: The mapping's ``notify`` entry.
    sa.Column("name", sa.String(63), nullable=False),
    #: The variable that holds the webhook's URL (the URL itself is never stored).
    sa.Column("url_variable", sa.String(120), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    #: The message: it carries the values the mapping chose to show.
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: Posts tried (each claim counts one).
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    #: When it is due; a worker that claims it moves this out by ``CLAIM_LEASE``, so the others skip it.
    sa.Column("next_try_at", UTCDateTime()),
    #: Why it was not sent (the endpoint's answer, "HTTP 503"; never the URL).
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("sent_at", UTCDateTime()),
    sa.UniqueConstraint("program", "inbox_id", "name", name="uq_notifications_delivery_name"),
    sa.Index("ix_notifications_status_next_try_at", "status", "next_try_at"),
    sa.Index("ix_notifications_inbox_id", "inbox_id"),
)

#: A claimed row is left alone this long (seconds) by the other workers: longer than a claim's posts take.
CLAIM_LEASE = 300
#: Rows one claim takes.
CLAIM_BATCH = 10


@dataclass(frozen=True)
class Claimed:
    id: int
    program: str
    inbox_id: int
    name: str
    url_variable: str
    format: str
    text: str
    #: Posts tried, this one included.
    attempts: int


def add(conn: Connection, rows: Sequence[tuple[int, Notice]], at: datetime, *,
        program: str = DEFAULT_PROGRAM) -> None:
    """Write ``rows`` of ``program`` on ``conn`` (the batch's transaction): each a delivery's id and
    a notice its mapping gives (``sync.mapping.Notice``), written only if the delivery has none of
    that name yet. One that could not be made is ``failed`` with its problem."""
    insert_ignore(conn, notifications, [
        {"program": program, "inbox_id": inbox_id, "name": row.name, "url_variable": row.url_variable,
         "format": row.format, "text": row.text, "attempts": 0, "created_at": at,
         "status": NotificationStatus.FAILED if row.problem else NotificationStatus.PENDING,
         "next_try_at": None if row.problem else at, "last_error": row.problem}
        for inbox_id, row in rows])


def _due(now: datetime):
    t = notifications
    return sa.and_(t.c.status == NotificationStatus.PENDING, t.c.next_try_at <= now)


def claim(engine: Engine, now: datetime, limit: int = CLAIM_BATCH) -> list[Claimed]:
    """Take up to ``limit`` due rows, oldest first: each counts an attempt and is left alone by
    other workers for ``CLAIM_LEASE`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB while
    claiming; SQLite has one writer). A worker that dies lets go when the lease lapses."""
    t = notifications
    with transaction(engine) as conn:
        query = sa.select(t.c.id).where(_due(now)).order_by(t.c.next_try_at, t.c.id).limit(limit)
        ids = list(conn.execute(query.with_for_update(skip_locked=True)).scalars())
        if not ids:
            return []
        conn.execute(t.update().where(t.c.id.in_(ids))
                     .values(attempts=t.c.attempts + 1, next_try_at=now + timedelta(seconds=CLAIM_LEASE)))
        rows = conn.execute(sa.select(t.c.id, t.c.program, t.c.inbox_id, t.c.name, t.c.url_variable, t.c.format,
                                      t.c.text, t.c.attempts).where(t.c.id.in_(ids)).order_by(t.c.id)).all()
    return [Claimed(*row) for row in rows]


def sent(engine: Engine, row_id: int, at: datetime) -> None:
    t = notifications
    with transaction(engine) as conn:
        conn.execute(t.update().where(t.c.id == row_id)
                     .values(status=NotificationStatus.SENT, sent_at=at, next_try_at=None))


def not_sent(engine: Engine, row_id: int, reason: str, retry_at: datetime | None) -> None:
    """Note why the row was not sent: tried again at ``retry_at``, or (None) ``failed`` for good."""
    t = notifications
    status = NotificationStatus.PENDING if retry_at is not None else NotificationStatus.FAILED
    with transaction(engine) as conn:
        conn.execute(t.update().where(t.c.id == row_id)
                     .values(status=status, next_try_at=retry_at, last_error=reason[:2000]))


def next_due(conn: Connection) -> datetime | None:
    """When the earliest pending row is due (None: none is pending)."""
    t = notifications
    return conn.execute(sa.select(sa.func.min(t.c.next_try_at))
                        .where(t.c.status == NotificationStatus.PENDING)).scalar()


def of_delivery(conn: Connection, inbox_id: int) -> list[dict]:
    """The rows inbox row ``inbox_id`` wrote, in its mapping's order, for ``/ops``."""
    t = notifications
    rows = conn.execute(sa.select(t.c.name, t.c.url_variable, t.c.format, t.c.text, t.c.status, t.c.attempts,
                                  t.c.next_try_at, t.c.last_error, t.c.created_at, t.c.sent_at)
                        .where(t.c.inbox_id == inbox_id).order_by(t.c.id))
    return [dict(row._mapping) for row in rows]


@dataclass(frozen=True)
class Summary:
    """The rows by status, and since when the oldest unsent one waits (None: none waits)."""

    counts: dict[str, int]
    oldest_unsent_at: datetime | None
    #: Failed rows written since the ``recent`` time ``summary`` was asked about (0: not asked).
    failed_recently: int = 0

    def oldest_age(self, now: datetime) -> float:
        """Seconds the oldest pending row has waited at ``now`` (0 when none waits)."""
        return max(0.0, (now - self.oldest_unsent_at).total_seconds()) if self.oldest_unsent_at else 0.0


def summary(conn: Connection, program: str | None = None, recent: datetime | None = None) -> Summary:
    """How many rows there are by status (every status named, 0 when none), when the oldest
    pending one was written, and (given ``recent``) how many failed ones were written since then;
    of ``program``, or (None) of every program."""
    t = notifications
    where = [t.c.program == program] if program is not None else []
    counts = {status.value: 0 for status in NotificationStatus}
    for status, count in conn.execute(sa.select(t.c.status, sa.func.count()).where(*where).group_by(t.c.status)):
        counts[status] = count
    oldest = conn.execute(sa.select(sa.func.min(t.c.created_at))
                          .where(t.c.status == NotificationStatus.PENDING, *where)).scalar()
    failed = 0
    if recent is not None and counts[NotificationStatus.FAILED]:
        failed = conn.execute(sa.select(sa.func.count()).where(
            t.c.status == NotificationStatus.FAILED, t.c.created_at >= recent, *where)).scalar()
    return Summary(counts, oldest, failed)


#: What a pruned notification's text becomes (``prune_texts``): its row stays, so its delivery
#: still never sends it twice.
PRUNED_TEXT = ""
_DONE = (NotificationStatus.SENT, NotificationStatus.FAILED)


def _prunable(before: datetime):
    t = notifications
    return sa.and_(t.c.status.in_(_DONE), t.c.created_at < before, t.c.text != PRUNED_TEXT)


def prunable_texts(engine: Engine, before: datetime) -> int:
    """How many texts ``prune_texts(before)`` would drop now."""
    with transaction(engine) as conn:
        return conn.execute(sa.select(sa.func.count()).where(_prunable(before))).scalar()


def prune_texts(engine: Engine, before: datetime, batch: int = 1000) -> int:
    """Drop the texts (they carry the values the mapping chose to show) of the notifications
    sent or failed that were written before ``before``, ``batch`` rows a transaction; how many.
    Pending ones keep theirs: they are still to be sent. Running it again finds nothing to do."""
    t = notifications
    done = 0
    while True:
        with transaction(engine) as conn:
            ids = conn.execute(sa.select(t.c.id).where(_prunable(before)).order_by(t.c.id).limit(batch)).scalars().all()
            if ids:
                conn.execute(t.update().where(t.c.id.in_(ids), _prunable(before)).values(text=PRUNED_TEXT))
        done += len(ids)
        if len(ids) < batch:
            return done
