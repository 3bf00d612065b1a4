"""The adapters a process works with, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from sync import db, queue
from sync.inbox import Inbox
from sync.queue import JobQueue
from sync.settings import Settings


@dataclass
class Services:
    settings: Settings
    inbox: Inbox
    jobs: JobQueue

    @classmethod
    def build(cls, settings: Settings, redis_connection: redis.Redis | None = None) -> Services:
        """Wire the adapters; nothing connects until first used."""
        connection = redis_connection or queue.connect(settings.redis_url)
        return cls(
            settings=settings,
            inbox=Inbox(db.engine_for(settings.database_url)),
            jobs=JobQueue(connection),
        )


_current: Services | None = None


def install(services: Services) -> None:
    """Make ``services`` the ones jobs in this process use (the worker calls this at start)."""
    global _current
    _current = services


def current() -> Services:
    """The services of this process; built from the environment on first use."""
    global _current
    if _current is None:
        _current = Services.build(Settings.from_env())
    return _current
