"""Backfill: load what Partnero already holds, page by page, through the same mappings as webhooks.

Each page of a list (partners, then customers, then transactions: parents first) is compared
with what is held and what differs is applied (``sync.partnero.resync``); then the run records
its place (``sync.store.runs``). A run is of one program (``backfill_runs.program``): it reads
that program's lists with its key, applies them as its deliveries, and is only ever resumed by a
backfill of the same program. Safe beside live webhooks and safe to repeat: an object never
overwrites a newer state, and an object held as listed is not stored again. Interrupted (stopped,
killed, out of time), a run carries on from its last completed page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sync.core.errors import ConfigurationError, SyncError
from sync.mapping import MappingSet
from sync.ops.progress import duration
from sync.partnero.api import Page
from sync.partnero.resync import Resync
from sync.rules import listed
from sync.settings import DEFAULT_PROGRAM
from sync.store.runs import OVER, Run, RunStatus, Runs

log = logging.getLogger(__name__)


class AlreadyRunning(SyncError):
    """Another process is carrying the same backfill on right now."""


def name(run_id: int, program: str | None = None) -> str:
    """How a run is called in what a person reads: ``backfill #3``, or ``backfill #3 of program
    affiliate`` (``program``: given when the deployment names its programs)."""
    return f"backfill #{run_id}" + (f" of program {program}" if program else "")


@dataclass
class Progress:
    """Where a backfill is, for its progress line and its job's description in the dashboard."""

    run_id: int
    entity: str
    page: int
    last_page: int | None
    #: Objects in the current list, when Partnero said.
    total: int | None
    #: Objects of the current list read so far (counting pages read before a resume).
    entity_done: int
    #: Objects read by this process, and how long it took.
    records: int = 0
    elapsed: float = 0.0
    #: Objects that differed from what is held, sent through the mappings.
    applied: int = 0
    unchanged: int = 0
    skipped: int = 0
    #: Deliveries that could not be applied (each recorded on its inbox row, with the reason).
    failed: int = 0
    #: The program, when the deployment names its programs (None: its one program, unnamed).
    program: str | None = None

    @property
    def rate(self) -> float:
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Time left for the current list at the current rate; None when it cannot be told."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.entity_done, 0) / self.rate

    def read(self, page: Page, counts: dict[str, int], elapsed: float) -> None:
        """One more ``page`` read, ``elapsed`` seconds after this process began: where the run is
        now, and what became of the page's objects (``counts``)."""
        self.page, self.last_page, self.total = page.number, page.last_page, page.total
        self.entity_done += counts["records"]
        for name in ("records", "applied", "unchanged", "skipped", "failed"):
            setattr(self, name, getattr(self, name) + counts[name])
        self.elapsed = elapsed

    def line(self) -> str:
        pages = f"page {self.page}" + (f" of {self.last_page}" if self.last_page else "")
        of = f" of {self.total:,}" if self.total is not None else ""
        left = self.seconds_left
        eta = f", about {duration(left)} left" if left is not None else ""
        return (f"{name(self.run_id, self.program)}: {self.entity} {pages} ({self.entity_done:,}{of}{eta}); "
                f"{self.records:,} records read, {self.rate:,.0f}/s: {self.applied:,} applied, "
                f"{self.unchanged:,} unchanged, {self.skipped:,} skipped, {self.failed:,} failed")


class Backfill:
    """Runs one program's backfills: ``prepare`` finds the run to start or resume, ``run`` carries it on."""

    def __init__(self, services, api, *, page_size: int = 250, timer: Callable[[], float] = time.monotonic,
                 program: str = DEFAULT_PROGRAM, mappings: MappingSet | None = None):
        """``api`` reads ``program``'s lists (its key); ``mappings`` are the program's (None: the process's)."""
        self.services = services
        self.api = api
        self.program = program
        self.runs = Runs(services.inbox.engine, services.clock)
        self.resync = Resync(services, source="backfill", program=program, mappings=mappings)
        self.page_size = page_size
        #: Seconds, for the rate a run reads at (not the time of day: that is ``runs.clock``).
        self.timer = timer

    def name(self, run_id: int) -> str:
        """The run as a person reads it: named with its program when the deployment names programs."""
        return name(run_id, self.program if self.services.settings.named_programs else None)

    def prepare(self, entities: tuple[str, ...] | None = None, since: datetime | None = None, *,
                restart: bool = False, job_id: str | None = None) -> Run:
        """The run to carry on: the unfinished one of the same lists (None: every list a mapping
        loads from) and ``since`` (unless ``restart``), else a new one. Raises ``AlreadyRunning``
        when that run is live elsewhere, ``ConfigurationError`` when no mapping loads one of the
        lists (before anything is read).

        Taking a run up and starting one are each a single conditional write (``Runs.take_up``,
        the unique ``open_scope`` of ``Runs.start``): of two backfills prepared at the same moment,
        one gets the run and the other is refused."""
        entities = tuple(listed.mappings_for(self.resync.mappings, entities))
        for _ in range(_TRIES):
            unfinished = self.runs.unfinished(entities, since, program=self.program)
            if unfinished is None:
                started = self.runs.start(entities, since, job_id, program=self.program)
                if started is not None:
                    return started
                continue  # another backfill started it just now: look at it
            if restart and self.runs.abandon(unfinished.id, "replaced by a new backfill (--restart)", job_id):
                continue
            if not restart and self.runs.take_up(unfinished.id, job_id):
                return self.runs.get(unfinished.id)
            now = self.runs.get(unfinished.id)
            if now.status not in OVER:  # carried on by someone else right now
                raise _running(self.name(now.id), now, self.runs.clock())
            # it was finished or abandoned meanwhile: look again
        # Runs of these lists kept starting and finishing under our feet.
        of = f" of program {self.program}" if self.services.settings.named_programs else ""
        raise AlreadyRunning(f"another backfill{of} of {', '.join(entities)} keeps starting; wait for it, or follow "
                             "it with `partnero-sync status`")

    def run(self, run: Run, *, should_stop: Callable[[], bool] = lambda: False,
            on_page: Callable[[Progress], None] | None = None) -> Run:
        """Carry ``run`` on from its place until it is finished or ``should_stop`` says so (checked
        after each page); returns it as it then stands.

        An API key Partnero refuses marks it failed; anything else that stops it (Partnero or the
        database away for longer than the retries, Ctrl-C, a job's time-out) marks it stopped,
        with the error but for Ctrl-C. Either way it can be resumed, and the error is raised.
        """
        if run.program != self.program:
            raise ValueError(f"{name(run.id)} is program {run.program}'s, not {self.program}'s")
        started = self.timer()
        progress = Progress(run.id, run.entity, run.next_page - 1, run.last_page, None, 0,
                            program=self.program if self.services.settings.named_programs else None)
        try:
            listed.mappings_for(self.resync.mappings, run.entities)  # the mappings may have changed since
            for index in range(run.entities.index(run.entity), len(run.entities)):
                entity = run.entities[index]
                first = run.next_page if entity == run.entity else 1
                progress.entity, progress.total = entity, None
                for page in self.api.pages(entity, start=first, limit=self.page_size):
                    if page.number == first:  # the pages before it, of the size Partnero gives
                        progress.entity_done = (first - 1) * (page.per_page or self.page_size)
                    examined = self.resync.examine(entity, page.objects, page.observed_at, run.since)
                    applied = self.resync.apply(examined)
                    counts = {"records": len(page.objects), "applied": len(examined.drifts),
                              "unchanged": examined.unchanged, "skipped": examined.skipped, "failed": applied.failed}
                    finished_list = page.is_last and index + 1 < len(run.entities)
                    if finished_list:  # carry on with the next list
                        self.runs.advance(run.id, run.entities[index + 1], 1, None, **counts)
                    else:
                        self.runs.advance(run.id, entity, page.number + 1, page.last_page, **counts)
                    progress.read(page, counts, elapsed=self.timer() - started)
                    if on_page is not None:
                        on_page(progress)
                    if should_stop() and not (page.is_last and index + 1 == len(run.entities)):
                        self.runs.finish(run.id, RunStatus.STOPPED)
                        return self.runs.get(run.id)
            self.runs.finish(run.id)
            self.services.request_flush(force=True)  # what gathered goes now, not a minute later
        except ConfigurationError as exc:
            self._stopped(run.id, RunStatus.FAILED, str(exc))
            raise
        except KeyboardInterrupt:  # a person stopped it: nothing to report
            self._stopped(run.id, RunStatus.STOPPED, None)
            raise
        except BaseException as exc:
            self._stopped(run.id, RunStatus.STOPPED, str(exc) if isinstance(exc, SyncError) else type(exc).__name__)
            raise
        return self.runs.get(run.id)

    def _stopped(self, run_id: int, status: str, error: str | None) -> None:
        try:
            self.runs.finish(run_id, status, error)
        except SyncError as exc:  # the database is what is away: the run shows as running, then stale
            log.warning("%s: could not record that it stopped: %s", self.name(run_id), exc)


#: How often ``prepare`` looks again when the run it found changed under it.
_TRIES = 5


def _running(called: str, run: Run, now: datetime) -> AlreadyRunning:
    ago = duration((now - run.heartbeat_at).total_seconds())
    return AlreadyRunning(f"{called} is running (it moved {ago} ago); wait for it, or follow "
                          "it with `partnero-sync status`")
