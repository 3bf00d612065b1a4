"""The adapters a process works with, built once from the settings by the process's entry point
(the CLI's commands, the app factory, ``partnero-sync dev``) and handed to what needs them: the
worker hands them to every job it runs (``sync.worker.process``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import redis

from sync.core import backoff
from sync.core.clock import Clock, system_clock
from sync.core.errors import TransientError
from sync.mapping import MappingSet, load_mappings
from sync.mapping.spec import Problem, unset_urls
from sync.ops import metrics
from sync.pipeline.processor import Processor
from sync.pipeline.sweeper import sweep
from sync.salesforce.client import SalesforceClient
from sync.salesforce.flush import Flusher
from sync.salesforce.org import OrgWatch
from sync.salesforce.schedule import FlushSchedule
from sync.settings import DEFAULT_PROGRAM, Settings
from sync.store import db, schema
from sync.store import notifications
from sync.store.inbox import Inbox
from sync.store.org_checks import OrgCheck, OrgChecks
from sync.store.outbox import Outbox
from sync.store.warehouse import Warehouse
from sync.worker import queues
from sync.worker.jobs import ask_for_notifications
from sync.worker.queues import JobQueue
from sync.worker.stopping import INTERRUPTIONS

log = logging.getLogger(__name__)


def load_program_mappings(settings: Settings) -> dict[str, MappingSet]:
    """Each program's mappings, by name, loaded and checked once per directory (programs that
    share a MAPPINGS_DIR share one set). A bad file raises ``MappingError`` listing every problem."""
    loaded: dict[Path, MappingSet] = {}
    found = {}
    for program in settings.programs:
        if program.mappings_dir not in loaded:
            loaded[program.mappings_dir] = load_mappings(program.mappings_dir, schema.RESERVED_TABLES)
        found[program.name] = loaded[program.mappings_dir]
    return found


def distinct_mappings(by_program: Mapping[str, MappingSet]) -> list[MappingSet]:
    """Each set once (programs that share a MAPPINGS_DIR share a set), in the programs' order."""
    return list({id(m): m for m in by_program.values()}.values())


@dataclass
class Services:
    settings: Settings
    #: What time it is, for every adapter here (``sync.core.clock``).
    clock: Clock
    inbox: Inbox
    queue: JobQueue
    #: The first program's mappings (the only program's, without PARTNERO_PROGRAMS).
    mappings: MappingSet
    warehouse: Warehouse
    processor: Processor
    _flusher: Flusher | None = field(default=None, repr=False)
    _flush_schedule: FlushSchedule | None = field(default=None, repr=False)
    _org_watch: OrgWatch | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis_connection: redis.Redis | None = None,
        mappings: MappingSet | Mapping[str, MappingSet] | None = None,
        clock: Clock = system_clock,
    ) -> Services:
        """Wire the adapters; nothing connects until first used.

        Loads and checks each program's mapping files unless ``mappings`` is given (then every
        program has those: by name, or one set for all): a bad file raises ``MappingError``
        listing every problem, and the process must not start.
        """
        if mappings is None:
            by_program = load_program_mappings(settings)
        elif isinstance(mappings, MappingSet):
            by_program = {program.name: mappings for program in settings.programs}
        else:
            by_program = dict(mappings)
        sets = distinct_mappings(by_program)
        engine = db.engine_for(settings.database_url, settings.database_lock_timeout)
        inbox = Inbox(engine, clock, programs=list(by_program))
        warehouse = Warehouse(sets if len(sets) > 1 else sets[0], clock)
        outbox = Outbox(clock) if settings.salesforce.enabled else None
        queue = JobQueue(redis_connection or queues.connect(settings.redis_url))
        # The process's metrics go to the Redis its jobs go to.
        metrics.recorder.bind(queue.connection)
        return cls(
            settings=settings,
            clock=clock,
            inbox=inbox,
            queue=queue,
            mappings=sets[0],
            warehouse=warehouse,
            processor=Processor(engine, inbox, by_program.get(DEFAULT_PROGRAM, sets[0]), warehouse, outbox,
                                interruptions=INTERRUPTIONS, programs=by_program),
        )

    @property
    def mappings_by_program(self) -> Mapping[str, MappingSet]:
        """Each program's mappings, by name, in PARTNERO_PROGRAMS' order: the processor's (one home)."""
        return self.processor.programs

    def mappings_for(self, program: str) -> MappingSet | None:
        """The mappings of ``program``; None when this deployment does not serve it."""
        return self.processor.mappings_for(program)

    def flusher(self) -> Flusher | None:
        """The Salesforce flush of every program (each with its own mappings and currency), or
        None while CRM sync is off."""
        if not self.settings.salesforce.enabled:
            return None
        if self._flusher is None:
            client = SalesforceClient(self.settings.salesforce, clock=self.clock)
            self._flusher = Flusher(self.inbox.engine, self.mappings_by_program, client,
                                    currency={p.name: p.currency for p in self.settings.programs},
                                    clock=self.clock, bulk_threshold=self.settings.bulk_threshold)
        return self._flusher

    @property
    def flush_schedule(self) -> FlushSchedule:
        """When Salesforce flushes run (``sync.salesforce.schedule``); asking is a no-op while CRM sync is off."""
        if self._flush_schedule is None:
            self._flush_schedule = FlushSchedule(self.queue, self.flusher(), self.clock,
                                                self.settings.salesforce_api_budget)
        return self._flush_schedule

    def request_flush(self, *, gather: bool = False, force: bool = False) -> None:
        """After deliveries were applied: ask for a Salesforce flush, when CRM sync is on; with
        ``gather`` (batch work) a minute out, so records gather into large jobs; with ``force`` at
        once even if one waits (a backfill that finished). Redis being away is only logged; the
        worker's housekeeping asks again while anything waits."""
        try:
            self.flush_schedule.request(backoff.GATHER_SECONDS if gather else None, force=force)
        except TransientError as exc:
            log.warning("%s", exc)

    def housekeeping(self) -> None:
        """What the worker does every interval: sweep lost deliveries, make sure a job posts the
        notifications that are due (``notify_due``), and make sure a flush is coming while
        Salesforce writes wait (after an outage, the backlog drains by itself); and
        check the Salesforce org against the mappings when that is due (``check_org``). The first
        housekeeping runs as the worker starts, before its first job."""
        sweep(self.inbox, self.queue, timedelta(seconds=self.settings.sweep_after_seconds))
        self.notify_due()
        if self.settings.salesforce.enabled:
            with self.inbox.engine.connect() as conn:
                waiting = Outbox().backlog(conn)
            if waiting:
                self.flush_schedule.request()
            self.check_org()

    def notify_due(self) -> None:
        """Make sure a job posts the mappings' notifications while any is due (one whose job was
        lost, or whose retry no job asked for)."""
        with self.inbox.engine.connect() as conn:
            due = notifications.next_due(conn)
        if due is not None and due <= self.clock():
            ask_for_notifications(self.queue)

    def unset_webhook_urls(self) -> list[Problem]:
        """The mappings' ``notify`` entries whose URL variable is not set, naming file, entry and
        variable: their messages fail (with that reason) rather than being sent."""
        return [p for mappings in distinct_mappings(self.mappings_by_program)
                for p in unset_urls(mappings, self.settings.webhook_urls)]

    def check_org(self) -> OrgCheck | None:
        """Check the org against every program's mappings, when due (``OrgWatch``: at this
        process's first call, then again while the stored check does not say it fits); None while
        CRM sync is off."""
        flusher = self.flusher()
        if flusher is None:
            return None
        if self._org_watch is None:
            self._org_watch = OrgWatch(OrgChecks(self.inbox.engine, self.clock), flusher.client,
                                       flusher.mappings.values(), self.clock)
        return self._org_watch.run()

    def migrate(self) -> list[str]:
        """Upgrade the fixed tables and create or extend the mapped ones; returns what it did."""
        return schema.migrate(self.inbox.engine, self.warehouse)

