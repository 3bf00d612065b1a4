"""The ``backfill_runs`` table: each backfill, where it got to, and what it did.

A backfill records its place (the list it is reading and the next page) after every page it has
applied, so one that was interrupted (stopped, killed, its worker restarted) carries on from its
last completed page. A live run renews ``heartbeat_at`` as it goes; a run that still says
"running" but has not moved for ``STALE_AFTER`` died, and may be taken up again.

Each run is of one Partnero program (its API key reads that program's lists). At most one run of
the same program, lists and ``since`` is unfinished: its ``open_scope`` (which program and lists,
from when) is UNIQUE, and cleared when it finishes or is abandoned, so of two backfills started at
the same moment only one can start a run. A run is taken up (resumed) by a conditional update that
only succeeds while nobody else carries it on, so only one of two can resume it either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync.core.clock import Clock, system_clock
from sync.settings import DEFAULT_PROGRAM
from sync.store.db import metadata, transaction
from sync.store.sqltypes import PROGRAM, UTCDateTime

class RunStatus(StrEnum):
    """Where a backfill run stands (``backfill_runs.status``)."""

    QUEUED = "queued"  # waiting for a worker to take it up (``backfill --in-worker``)
    RUNNING = "running"
    STOPPED = "stopped"  # asked to stop, or its job's time ran out: resumable
    FAILED = "failed"  # stopped by an error a person must see (the API key refused): resumable
    FINISHED = "finished"
    ABANDONED = "abandoned"  # replaced by a new run (``backfill --restart``): never resumed


#: A run marked running that has not recorded progress for this long is taken to have died.
STALE_AFTER = timedelta(minutes=2)

backfill_runs = sa.Table(
    "backfill_runs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    #: The lists it reads, in order, comma-separated ("partners,customers,transactions").
    sa.Column("entities", sa.String(100), nullable=False),
    #: Only objects changed since then (``--since``); None: all.
    sa.Column("since", UTCDateTime()),
    sa.Column("status", sa.String(16), nullable=False),
    #: Where it goes on: the list, and the page of it not yet applied.
    sa.Column("entity", sa.String(32), nullable=False),
    sa.Column("next_page", sa.Integer, nullable=False),
    #: How many pages the current list has, when Partnero said.
    sa.Column("last_page", sa.Integer),
    sa.Column("records", sa.Integer, nullable=False, server_default="0"),
    sa.Column("applied", sa.Integer, nullable=False, server_default="0"),
    sa.Column("unchanged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    sa.Column("last_error", sa.Text),
    #: The RQ job carrying it on, when a worker runs it.
    sa.Column("job_id", sa.String(64)),
    #: ``scope(entities, since, program)`` while the run is unfinished, None once finished or
    #: abandoned: UNIQUE, so two unfinished runs of the same program, lists and ``since`` cannot both exist.
    sa.Column("open_scope", sa.String(200)),
    #: The Partnero program whose lists it reads.
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    sa.Index("ux_backfill_runs_open_scope", "open_scope", unique=True),
)

#: Statuses of a run that is over: it is never taken up again.
OVER = (RunStatus.FINISHED, RunStatus.ABANDONED)


def scope(entities: tuple[str, ...], since: datetime | None, program: str = DEFAULT_PROGRAM) -> str:
    """What makes two runs the same backfill: the program, the lists, and ``since`` (UTC) or
    ``all``. The program ``default``'s has no prefix, as before programs, so a run left
    unfinished by an older release is still found."""
    when = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if since is not None else "all"
    prefix = "" if program == DEFAULT_PROGRAM else f"{program}:"
    return f"{prefix}{','.join(entities)}@{when}"


@dataclass(frozen=True)
class Run:
    id: int
    entities: tuple[str, ...]
    since: datetime | None
    status: str
    entity: str
    next_page: int
    last_page: int | None
    records: int
    applied: int
    unchanged: int
    skipped: int
    failed: int
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    last_error: str | None
    job_id: str | None
    program: str = DEFAULT_PROGRAM

    @property
    def done(self) -> bool:
        return self.status == RunStatus.FINISHED

    def live(self, now: datetime) -> bool:
        """Whether someone is carrying it on at ``now`` (it recorded progress lately)."""
        return self.status == RunStatus.RUNNING and now - self.heartbeat_at < STALE_AFTER


#: The counters a page adds to.
COUNTERS = ("records", "applied", "unchanged", "skipped", "failed")


class Runs:
    """Backfill runs, behind the few operations backfills and ``status`` need."""

    def __init__(self, engine: Engine, clock: Clock = system_clock):
        self.engine = engine
        #: What time it is: stamps starts, heartbeats and ends.
        self.clock = clock

    def start(self, entities: tuple[str, ...], since: datetime | None, job_id: str | None = None, *,
              program: str = DEFAULT_PROGRAM) -> Run | None:
        """A new run of ``program``, running; None when the same program, lists and ``since``
        already have an unfinished one (perhaps started by someone else this very moment)."""
        now = self.clock()
        t = backfill_runs
        try:
            with transaction(self.engine) as conn:
                run_id = conn.execute(t.insert().values(
                    entities=",".join(entities), since=since, status=RunStatus.RUNNING, entity=entities[0], next_page=1,
                    started_at=now, heartbeat_at=now, job_id=job_id, open_scope=scope(entities, since, program),
                    program=program,
                )).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            return None
        return self.get(run_id)

    def get(self, run_id: int) -> Run | None:
        return self._newest(backfill_runs.c.id == run_id)

    def latest(self, program: str | None = None) -> Run | None:
        """The newest run (of ``program``; None: of any program)."""
        return self._newest(*([backfill_runs.c.program == program] if program is not None else []))

    def unfinished(self, entities: tuple[str, ...], since: datetime | None, *,
                   program: str = DEFAULT_PROGRAM) -> Run | None:
        """The run of the same program, lists and ``since`` that is not over: the one to resume."""
        return self._newest(backfill_runs.c.open_scope == scope(entities, since, program))

    def _newest(self, *conditions) -> Run | None:
        """The newest run that meets ``conditions``."""
        t = backfill_runs
        with transaction(self.engine) as conn:
            row = conn.execute(sa.select(t).where(*conditions).order_by(t.c.id.desc()).limit(1)).one_or_none()
        return _run(row) if row is not None else None

    def take_up(self, run_id: int, job_id: str | None = None) -> bool:
        """Mark ``run_id`` running again (by ``job_id``, when a worker carries it on), in one
        conditional update: False, and nothing changed, when it is over or someone else carries
        it on right now (it is running and moved within ``STALE_AFTER``; a run of ``job_id``
        itself may be taken up again by it)."""
        return self._claim(run_id, job_id, status=RunStatus.RUNNING, last_error=None, job_id=job_id)

    def abandon(self, run_id: int, reason: str, job_id: str | None = None) -> bool:
        """Mark ``run_id`` abandoned (its lists free for a new run), in one conditional update:
        False, and nothing changed, on the same terms as ``take_up``."""
        return self._claim(run_id, job_id, status=RunStatus.ABANDONED, last_error=reason, open_scope=None)

    def _claim(self, run_id: int, by: str | None, /, **values) -> bool:
        """Set ``values`` on ``run_id`` if it is not over and nobody but ``by`` (a job id) carries it on."""
        t = backfill_runs
        now = self.clock()
        free = sa.or_(t.c.status != RunStatus.RUNNING, t.c.heartbeat_at <= now - STALE_AFTER)
        if by is not None:
            free = sa.or_(free, t.c.job_id == by)
        with transaction(self.engine) as conn:
            claimed = conn.execute(t.update().where(t.c.id == run_id, t.c.status.not_in(OVER), free)
                                   .values(heartbeat_at=now, **values)).rowcount
        return claimed == 1

    def queue(self, run_id: int) -> None:
        """Mark ``run_id`` waiting for a worker to take it up."""
        self._update(run_id, status=RunStatus.QUEUED, job_id=None)

    def advance(self, run_id: int, entity: str, next_page: int, last_page: int | None, **counts: int) -> None:
        """Record that the pages before ``next_page`` of ``entity`` are applied, adding ``counts``."""
        t = backfill_runs
        self._update(run_id, entity=entity, next_page=next_page, last_page=last_page,
                     **{name: t.c[name] + counts.get(name, 0) for name in COUNTERS})

    def finish(self, run_id: int, status: str = RunStatus.FINISHED, error: str | None = None) -> None:
        ended = self.clock() if status == RunStatus.FINISHED else None
        over = {"open_scope": None} if status in OVER else {}
        self._update(run_id, status=status, last_error=error, finished_at=ended, **over)

    def _update(self, run_id: int, **values) -> None:
        t = backfill_runs
        with transaction(self.engine) as conn:
            conn.execute(t.update().where(t.c.id == run_id).values(heartbeat_at=self.clock(), **values))


def _run(row) -> Run:
    values = dict(row._mapping)
    values["entities"] = tuple(values["entities"].split(","))
    values.pop("open_scope")  # the lock, not a fact about the run (``status`` tells whether it is over)
    return Run(**values)
