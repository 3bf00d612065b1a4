"""The ``crm_bulk_jobs`` table: each Bulk API 2.0 ingest job a flush started, from its creation
until its results are recorded on its outbox rows (``crm_outbox.bulk_job`` names the job a row
travels in). A job whose row is not done belongs to the flushes: the one that started it, or the
next one, after a worker died. It holds Salesforce's job id, the program and object, counts and
states, never a record's data. A job carries the records of one program (a flush is of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync.settings import DEFAULT_PROGRAM
from sync.store.db import metadata
from sync.store.sqltypes import PROGRAM, UTCDateTime

crm_bulk_jobs = sa.Table(
    "crm_bulk_jobs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    #: Salesforce's id of the ingest job.
    sa.Column("job_id", sa.String(18), nullable=False),
    sa.Column("object", sa.String(80), nullable=False),
    #: Salesforce's state of the job as last seen (Open, UploadComplete, InProgress, JobComplete,
    #: Failed, Aborted).
    sa.Column("state", sa.String(16), nullable=False),
    #: How many records the job carries.
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    #: How many times a flush asked Salesforce how far it got.
    sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
    #: When a flush asks next (None: at the next flush).
    sa.Column("next_poll_at", UTCDateTime()),
    #: When its results were recorded on its rows (None: it is still running).
    sa.Column("done_at", UTCDateTime()),
    #: Why the job failed as a whole (Salesforce's errorMessage, values removed).
    sa.Column("error", sa.Text),
    #: The Partnero program whose records it carries.
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    sa.UniqueConstraint("job_id", name="uq_crm_bulk_jobs_job_id"),
    sa.Index("ix_crm_bulk_jobs_done_at", "done_at"),
)


@dataclass(frozen=True)
class BulkJob:
    """One ingest job, as kept."""

    job_id: str
    object: str
    state: str
    records: int
    created_at: datetime
    updated_at: datetime
    polls: int
    next_poll_at: datetime | None
    done_at: datetime | None
    error: str | None
    program: str = DEFAULT_PROGRAM

    def as_dict(self) -> dict:
        """What ``status``, ``/ops`` and the dashboard show of it."""
        return {"job_id": self.job_id, "object": self.object, "state": self.state, "records": self.records,
                "since": self.created_at.isoformat(timespec="seconds")}


def start(conn: Connection, job_id: str, object_name: str, records: int, at: datetime, *,
          program: str = DEFAULT_PROGRAM) -> None:
    """Keep a job of ``program``'s records just created at Salesforce (state Open)."""
    conn.execute(crm_bulk_jobs.insert().values(job_id=job_id, object=object_name, state="Open", records=records,
                                               created_at=at, updated_at=at, polls=0, program=program))


def running(conn: Connection, object_name: str | None = None, *, program: str | None = None) -> list[BulkJob]:
    """The jobs whose results are not recorded yet, oldest first (of one object, or all; of one
    program, or all)."""
    t = crm_bulk_jobs
    query = sa.select(t).where(t.c.done_at.is_(None)).order_by(t.c.id)
    if object_name is not None:
        query = query.where(t.c.object == object_name)
    if program is not None:
        query = query.where(t.c.program == program)
    return [_job(r) for r in conn.execute(query)]


def last_started(conn: Connection, object_name: str, *, program: str = DEFAULT_PROGRAM) -> datetime | None:
    """When the newest job of ``program``'s ``object_name`` was created (None: never)."""
    t = crm_bulk_jobs
    query = sa.select(sa.func.max(t.c.created_at)).where(t.c.program == program, t.c.object == object_name)
    return conn.execute(query).scalar()


def get(conn: Connection, job_id: str) -> BulkJob | None:
    row = conn.execute(sa.select(crm_bulk_jobs).where(crm_bulk_jobs.c.job_id == job_id)).one_or_none()
    return _job(row) if row is not None else None


def seen(conn: Connection, job_id: str, state: str, at: datetime, *, wait: float | None = None,
         error: str | None = None, records: int | None = None) -> None:
    """Note the job's state at Salesforce; ``wait``: seconds until the next flush asks again (a
    poll); ``records``: how many it carries (once uploaded)."""
    t = crm_bulk_jobs
    values: dict = {"state": state, "updated_at": at}
    if records is not None:
        values["records"] = records
    if wait is not None:
        values.update(polls=t.c.polls + 1, next_poll_at=at + timedelta(seconds=wait))
    if error is not None:
        values["error"] = error[:2000]
    conn.execute(t.update().where(t.c.job_id == job_id).values(**values))


def finish(conn: Connection, job_id: str, state: str, at: datetime) -> None:
    """The job's results are recorded on its rows: it no longer runs."""
    conn.execute(crm_bulk_jobs.update().where(crm_bulk_jobs.c.job_id == job_id)
                 .values(state=state, updated_at=at, done_at=at))


def _job(row) -> BulkJob:
    return BulkJob(row.job_id, row.object, row.state, row.records, row.created_at, row.updated_at, row.polls,
                   row.next_poll_at, row.done_at, row.error, row.program)
