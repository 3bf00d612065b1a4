"""The worker process: an RQ worker on partnero-sync's queues that also sweeps the inbox."""

from __future__ import annotations

import logging

import redis
import sqlalchemy as sa
from rq.worker import DequeueStrategy

from sync import services as services_module
from sync.services import Services
from sync.settings import Settings, redact_url
from sync.store import db
from sync.worker.queues import PartneroWorker, children_die_with_this_process

log = logging.getLogger(__name__)


def build_worker(settings: Settings, connection: redis.Redis | None = None, *, sweep_every: int = 60,
                 worker_class: type[PartneroWorker] = PartneroWorker) -> PartneroWorker:
    services = Services.build(settings, connection)
    services_module.install(services)
    # A mapping that gained a field gains its column at the next start.
    try:
        for line in services.migrate():
            log.info("schema: %s", line)
    except sa.exc.SQLAlchemyError as exc:
        if not db.is_transient(exc):
            raise
        # Jobs retry until the database is back; the release step or next start migrates.
        log.warning("could not check the schema, the database is unavailable: %s", type(exc).__name__)
    worker = worker_class(
        # Deliveries first: a flush waits for them, and hands over often (sync.salesforce.schedule); a
        # backfill works in slices, so the others get their turns between two.
        services.jobs.queues,
        connection=services.jobs.connection,
        maintenance_interval=sweep_every,
    )
    worker.housekeeping = services.housekeeping
    return worker


def run_worker(settings: Settings, *, burst: bool = False, sweep_every: int = 60,
               connection: redis.Redis | None = None, with_scheduler: bool = True) -> bool:
    worker = build_worker(settings, connection, sweep_every=sweep_every)
    worker.log.info(
        "partnero-sync worker: database %s, redis %s, Salesforce %s",
        redact_url(settings.database_url),
        redact_url(settings.redis_url),
        settings.salesforce.describe(),
    )
    if with_scheduler and not burst:
        children_die_with_this_process()  # RQ's scheduler runs in a child: it must not outlive us
    # Round robin between the queues: a long drain of deliveries and Salesforce flushes take turns.
    return worker.work(burst=burst, with_scheduler=with_scheduler and not burst,
                       logging_level=settings.log_level, dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
