"""The monitor: a thread in every worker and web process that, in the one process holding the
sender's lease, takes a snapshot every tick, keeps the alerts in step with it, and runs its tasks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sync.notify import webhook
from sync.ops import alerts
from sync.ops.history import History
from sync.ops.snapshot import Snapshot, take
from sync.store.alerts import AlertStore

log = logging.getLogger(__name__)

#: Seconds between two ticks.
TICK_SECONDS = 30.0
#: How long a held lease lasts unless renewed: several ticks, so a slow tick (a snapshot, one
#: webhook time-out) keeps it, and a dead process's lease passes on within minutes.
LEASE_SECONDS = 150.0

Task = Callable[[Snapshot], None]


class Monitor:
    """Every ``tick_seconds``: try to hold the sender's lease; if held, take one snapshot, reconcile
    the alerts with it and send what is owed (when ALERT_WEBHOOK_URL is set), then run ``tasks``.
    Time comes from the services' clock (tests drive it); nothing here is in a job's path."""

    def __init__(self, services: Any, *, tasks: list[Task] | None = None, tick_seconds: float = TICK_SECONDS,
                 lease_seconds: float = LEASE_SECONDS, post: alerts.Post = webhook.post):
        self.services = services
        self.tasks = list(tasks or [])
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.post = post
        self.store = AlertStore(services.inbox.engine)
        #: Who holds the lease: names the process, never anything secret.
        self.holder = f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self) -> bool:
        """Take or renew the lease; False when another process holds it."""
        return self.store.hold(self.holder, self.services.clock(), self.lease_seconds)

    def tick(self) -> bool:
        """One round; True when this process held the lease and did it. Any failure is logged,
        never raised: the thread goes on."""
        if not self.services.settings.alerts_enabled and not self.tasks:
            return False  # nothing to do: no snapshot taken, no lease held
        try:
            if not self.hold():
                return False
            snapshot = take(self.services)
        except Exception as exc:  # the database away: the next tick tries again
            log.warning("monitor: could not look (%s)", type(exc).__name__)
            return False
        self._run("alerts", self.alerts, snapshot)
        for task in self.tasks:
            self._run(getattr(task, "__name__", type(task).__name__), task, snapshot)
        return True

    def alerts(self, snapshot: Snapshot) -> None:
        """Keep the alerts in step with ``snapshot`` and send what is owed; nothing when alerts are off."""
        settings = self.services.settings
        if not settings.alerts_enabled:
            return
        alerts.reconcile(self.store, snapshot, settings.alert_remind_after)
        alerts.send_owed(self.store, settings, self.services.clock(), self.hold, self.post)

    def _run(self, name: str, task: Task, snapshot: Snapshot) -> None:
        try:
            task(snapshot)
        except Exception:
            log.exception("monitor: %s failed", name)

    def start(self) -> Monitor:
        """Run the ticks in a daemon thread (the first at once)."""
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.tick_seconds):
                return

    def stop(self, timeout: float = 15.0) -> None:
        """Stop ticking, and give the lease up so another process takes it at its next tick."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.store.release(self.holder)
        except Exception as exc:  # it expires by itself
            log.warning("monitor: could not give the lease up (%s)", type(exc).__name__)


def start(services: Any, tasks: list[Task] | None = None) -> Monitor:
    """A monitor for this process, started (every worker and web process runs one): the alerts,
    the minute's samples of /ops's charts (``sync.ops.history``), then ``tasks``."""
    settings = services.settings
    said = f"on ({settings.alert_webhook_format})" if settings.alerts_enabled else "off (ALERT_WEBHOOK_URL unset)"
    log.info("monitor: started; alerts %s", said)
    history = History(services.inbox.engine, services.clock, services.queue.connection)
    return Monitor(services, tasks=[history, *(tasks or [])]).start()
