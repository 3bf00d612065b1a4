"""The worker process: an RQ worker on the ``partnero`` queue that also sweeps the inbox."""

from __future__ import annotations

from datetime import timedelta

import redis

from sync import services as services_module
from sync.queue import PartneroWorker
from sync.services import Services
from sync.settings import Settings, redact_url
from sync.sweeper import sweep


def build_worker(settings: Settings, connection: redis.Redis | None = None, *, sweep_every: int = 60,
                 worker_class: type[PartneroWorker] = PartneroWorker) -> PartneroWorker:
    services = Services.build(settings, connection)
    services_module.install(services)
    worker = worker_class(
        [services.jobs.queue],
        connection=services.jobs.connection,
        maintenance_interval=sweep_every,
    )
    older_than = timedelta(seconds=settings.sweep_after_seconds)
    worker.housekeeping = lambda: sweep(services.inbox, services.jobs, older_than)
    return worker


def run_worker(settings: Settings, *, burst: bool = False, sweep_every: int = 60,
               connection: redis.Redis | None = None, with_scheduler: bool = True) -> bool:
    worker = build_worker(settings, connection, sweep_every=sweep_every)
    worker.log.info(
        "partnero-sync worker: database %s, redis %s",
        redact_url(settings.database_url),
        redact_url(settings.redis_url),
    )
    return worker.work(burst=burst, with_scheduler=with_scheduler and not burst,
                       logging_level=settings.log_level)
