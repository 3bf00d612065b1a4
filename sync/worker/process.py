"""The worker process: an RQ worker on partnero-sync's queues that runs every job with the services
its entry point built (``sync.worker.jobs.Context``), sweeps the inbox, and runs the monitor
(``sync.ops.monitor``: the alerts) in a thread beside it.

The entry points build the services and hand them over: ``partnero-sync worker``
(``sync.cli.service``) to ``run_worker``, ``partnero-sync dev`` (``sync.local``) to
``run_in_thread`` when no Redis answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import sqlalchemy as sa
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from rq.worker import DequeueStrategy

from sync.ops import monitor
from sync.settings import redact_url
from sync.store import db
from sync.worker.jobs import Context
from sync.worker.queues import JobQueue, PartneroWorker, children_die_with_this_process

log = logging.getLogger(__name__)


class WorkerServices(Context, Protocol):
    """What the worker needs of its process's services: what its jobs need, and the queue to
    listen on, the migration it runs at start and the housekeeping it does every interval
    (``sync.services.Services`` is the one the entry points build)."""

    @property
    def jobs(self) -> JobQueue: ...

    def migrate(self) -> list[str]: ...

    def housekeeping(self) -> None: ...

    def unset_webhook_urls(self) -> list: ...


def build_worker(services: WorkerServices, *, sweep_every: int = 60,
                 worker_class: type[PartneroWorker] = PartneroWorker) -> PartneroWorker:
    """A worker on the services' queues that hands them to every job it runs."""
    # A mapping that gained a field gains its column at the next start.
    try:
        for line in services.migrate():
            log.info("schema: %s", line)
    except sa.exc.SQLAlchemyError as exc:
        if not db.is_transient(exc):
            raise
        # Jobs retry until the database is back; the release step or next start migrates.
        log.warning("could not check the schema, the database is unavailable: %s", type(exc).__name__)
    for problem in services.unset_webhook_urls():  # not a reason to stop every delivery: each such message fails
        log.error("notify: %s", problem)
    worker = worker_class(
        # Deliveries first: a flush waits for them, and hands over often (sync.salesforce.schedule); a
        # backfill works in slices, so the others get their turns between two.
        services.queue.queues,
        connection=services.queue.connection,
        maintenance_interval=sweep_every,
        context=services,
    )
    worker.housekeeping = services.housekeeping
    return worker


def run_worker(services: WorkerServices, *, burst: bool = False, sweep_every: int = 60,
               with_scheduler: bool = True) -> bool:
    settings = services.settings
    worker = build_worker(services, sweep_every=sweep_every)
    worker.log.info(
        "partnero-sync worker: database %s, redis %s, Salesforce %s",
        redact_url(settings.database_url),
        redact_url(settings.redis_url),
        settings.salesforce.describe(),
    )
    if with_scheduler and not burst:
        children_die_with_this_process()  # RQ's scheduler runs in a child: it must not outlive us
    # A burst worker (one-off work) is gone in moments: the long-running ones watch and alert.
    watching = None if burst else monitor.start(services)
    try:
        # Round robin between the queues: a long drain of deliveries and Salesforce flushes take turns.
        return worker.work(burst=burst, with_scheduler=with_scheduler and not burst,
                           logging_level=settings.log_level, dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
    finally:
        if watching is not None:
            watching.stop()


class _ThreadWorker(PartneroWorker):
    """A worker in a thread of a process that does other things (``partnero-sync dev``)."""

    # Job time-outs by timer: SIGALRM is for the main thread only.
    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def run_in_thread(services: WorkerServices, *, sweep_every: int = 5) -> Callable[[], None]:
    """Start a worker in a thread of this process, on the services' Redis (an in-memory stand-in:
    no scheduler process can share it, so due retries are moved by its housekeeping); returns
    what stops it, after the job in hand.

    The worker does not take signals (RQ's handlers would call Redis from inside a signal
    handler, which can deadlock the in-memory stand-in).
    """
    worker = build_worker(services, sweep_every=sweep_every, worker_class=_ThreadWorker)
    scheduler = RQScheduler([worker.queues[0]], connection=worker.connection)

    def housekeeping() -> None:
        scheduler.enqueue_scheduled_jobs()
        services.housekeeping()

    worker.housekeeping = housekeeping
    thread = threading.Thread(target=worker.work, name="worker", daemon=True,
                              kwargs={"with_scheduler": False, "logging_level": services.settings.log_level,
                                      "dequeue_strategy": DequeueStrategy.ROUND_ROBIN})
    thread.start()
    watching = monitor.start(services)

    def stop() -> None:
        # Ask the worker to stop after the job in hand, and wake it if it is waiting for one.
        worker._stop_requested = True
        worker.queues[0].enqueue(_wake)
        thread.join(timeout=60)
        watching.stop()

    return stop


def _wake() -> None:
    """An empty job: it wakes a waiting worker so that it notices it should stop."""
