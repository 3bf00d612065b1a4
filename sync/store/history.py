"""ops_history: one sample per program per minute of what ``/ops`` charts, kept for 25 hours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync.store.db import insert_ignore, metadata, transaction
from sync.store.sqltypes import PROGRAM, UTCDateTime

#: How long a sample is kept: the longest chart (24 hours) and an hour to spare. Older rows go as
#: new samples are written, so the table holds about 1,500 rows per program.
KEEP = timedelta(hours=25)

ops_history = sa.Table(
    "ops_history",
    metadata,
    sa.Column("program", PROGRAM, nullable=False),
    #: The minute the sample was taken in (seconds cut off).
    sa.Column("at", UTCDateTime(), nullable=False),
    # Deliveries in the minute before the sample (None: not known, e.g. Redis away or reset).
    sa.Column("received", sa.Integer),
    sa.Column("processed", sa.Integer),
    sa.Column("failed", sa.Integer),
    # The metrics' counters as read with the sample: the next minute's counts are the difference.
    sa.Column("received_total", sa.BigInteger),
    sa.Column("processed_total", sa.BigInteger),
    sa.Column("failed_total", sa.BigInteger),
    # Gauges as of the sample, in whole seconds and records (None: not known or CRM sync off).
    sa.Column("oldest_pending_age", sa.Integer),
    sa.Column("crm_backlog", sa.Integer),
    sa.Column("crm_lag", sa.Integer),
    sa.Column("crm_refused", sa.Integer),
    sa.PrimaryKeyConstraint("program", "at", name="pk_ops_history"),
    sa.Index("ix_ops_history_at", "at"),
)


@dataclass(frozen=True)
class Sample:
    """One row of ``ops_history``: one program's minute."""

    program: str
    at: datetime
    received: int | None = None
    processed: int | None = None
    failed: int | None = None
    received_total: int | None = None
    processed_total: int | None = None
    failed_total: int | None = None
    oldest_pending_age: int | None = None
    crm_backlog: int | None = None
    crm_lag: int | None = None
    crm_refused: int | None = None


_COLUMNS = tuple(f.name for f in fields(Sample))


class HistoryStore:
    """The samples in the database: written idempotently per (program, minute), read by time."""

    def __init__(self, engine: Engine, keep: timedelta = KEEP):
        self.engine = engine
        self.keep = keep

    def write(self, samples: Sequence[Sample]) -> None:
        """Store ``samples``, each replacing a sample of its program and minute (written twice,
        a minute is still one row), and delete the samples older than ``keep`` before the newest."""
        if not samples:
            return
        t = ops_history
        with transaction(self.engine) as conn:
            for sample in samples:
                conn.execute(t.delete().where(t.c.program == sample.program, t.c.at == sample.at))
            # Should a second writer slip in between (one process samples: it should not), its row stands.
            insert_ignore(conn, t, [{name: getattr(s, name) for name in _COLUMNS} for s in samples])
            conn.execute(t.delete().where(t.c.at < max(s.at for s in samples) - self.keep))

    def at(self, at: datetime) -> dict[str, Sample]:
        """The samples of the minute ``at``, by program."""
        t = ops_history
        with transaction(self.engine) as conn:
            rows = conn.execute(sa.select(*t.c).where(t.c.at == at)).all()
        return {row.program: Sample(**row._mapping) for row in rows}

    def read(self, program: str | None, since: datetime, until: datetime) -> list[Sample]:
        """The samples from ``since`` to ``until`` (both included) of ``program`` (None: of every
        program), oldest first."""
        t = ops_history
        query = sa.select(*t.c).where(t.c.at >= since, t.c.at <= until).order_by(t.c.at, t.c.program)
        if program is not None:
            query = query.where(t.c.program == program)
        with transaction(self.engine) as conn:
            return [Sample(**row._mapping) for row in conn.execute(query)]

    def count(self) -> int:
        """How many samples the table holds."""
        with transaction(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(ops_history)).scalar_one()
