"""The job queue in RQ: the connection, enqueueing the jobs (``sync.worker.jobs``), and the worker
class that runs them, handing each the worker's context.

RQ is imported here, in ``sync.worker.jobs`` (a job's ``Retry`` and its current job),
``sync.worker.stopping`` (RQ's time-out) and ``sync.worker.process`` (the worker's start); outside
``sync/worker``, only by ``app.dashboard``, which mounts rq-dashboard.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import redis
from redis.client import PubSubWorkerThread
from rq import Queue, get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.worker import SimpleWorker
from rq.worker_registration import get_keys as worker_keys

from sync.core.errors import TransientError
from sync.ops.snapshot import QueueCounts
from sync.worker import jobs
from sync.worker.stopping import request_stop

log = logging.getLogger(__name__)

QUEUE_NAME = "partnero"
#: Finished jobs and their results stay a day, so the dashboard shows recent work (RQ's default:
#: 500 seconds).
RESULT_TTL = 24 * 3600
#: Failed jobs stay a week in RQ's failed registry, long enough for a person to see them after a
#: weekend (RQ's default: a year). Their tracebacks carry no delivery's values (``sync.worker.jobs``).
FAILURE_TTL = 7 * 24 * 3600
JOB_TIMEOUT = 300


def connect(url: str) -> redis.Redis:
    """A Redis client for RQ; short time-outs so a missing Redis is noticed, not waited on."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )


#: Set while a wake-up is on its way: deliveries stored meanwhile need no other (see ``wake``).
WAKE_KEY = "partnero-sync:wake-up"
#: A wake-up older than this is presumed lost (Redis restarted, say): the next one goes ahead.
WAKE_TTL = 60
#: Salesforce flushes run on a queue of their own, after the deliveries' (see ``sync.salesforce.schedule``).
CRM_QUEUE_NAME = "partnero-crm"
FLUSH_JOB_TIMEOUT = 300
#: Backfills run on a queue of their own too, in slices that take turns with the other queues.
BACKFILL_QUEUE_NAME = "partnero-backfill"
BACKFILL_JOB_TIMEOUT = 600
#: The mappings' notifications are posted on a queue of their own, so a slow endpoint never
#: holds up a delivery's wake-up; at most one send job waits now, and one later (a retry's time).
NOTIFY_QUEUE_NAME = "partnero-notify"
NOTIFY_JOB_TIMEOUT = 600
NOTIFY_KEY = "partnero-sync:notify"
NOTIFY_LATER_KEY = "partnero-sync:notify-later"

#: Each worker process says it is alive under this key (and its name) every ``ALIVE_EVERY``
#: seconds, for ``ALIVE_TTL``: RQ's own record of a worker outlives a killed one by minutes.
ALIVE_KEY = "partnero-sync:alive:"
ALIVE_EVERY = 2
ALIVE_TTL = 10

def _now_or_later(queue: Queue, func: Callable, delay: float | None, options: dict) -> Job:
    """``func`` enqueued on ``queue`` now, or (``delay`` seconds) scheduled for then."""
    if delay:
        return queue.enqueue_in(timedelta(seconds=delay), func, **options)
    return queue.enqueue(func, **options)


class JobQueue:
    """The ``partnero`` queue (wake-ups: workers claim and apply pending deliveries), the
    ``partnero-crm`` queue (Salesforce flushes), the ``partnero-notify`` queue (the mappings'
    notifications posted) and the ``partnero-backfill`` queue."""

    def __init__(self, connection: redis.Redis, name: str = QUEUE_NAME):
        self.connection = connection
        self.queue = Queue(name, connection=connection)
        self.crm_queue = Queue(CRM_QUEUE_NAME, connection=connection)
        self.backfill_queue = Queue(BACKFILL_QUEUE_NAME, connection=connection)
        self.notify_queue = Queue(NOTIFY_QUEUE_NAME, connection=connection)

    @property
    def queues(self) -> list[Queue]:
        """What a worker listens to: deliveries first, then Salesforce flushes, notifications, backfills."""
        return [self.queue, self.crm_queue, self.notify_queue, self.backfill_queue]

    def wake(self, *, force: bool = False) -> bool:
        """Make sure a worker is on its way to claim pending deliveries; True when this call
        enqueued the wake-up.

        At most one wake-up waits at a time: a mark in Redis says one is on its way, and a worker
        clears it as it starts, so deliveries stored while it works wake the next one. ``force``
        (the sweeper, a drain handing over) goes ahead despite the mark unless a job already waits
        in the queue, so a mark that outlived its job (Redis restarted) holds nothing up. Raises ``TransientError`` when Redis cannot take it; the
        rows stay pending, and the sweeper wakes a worker later.
        """
        try:
            if not self.connection.set(WAKE_KEY, "1", nx=True, ex=WAKE_TTL):
                # One is on its way, or its mark outlived it: forced, go ahead unless one waits.
                if not force or self.queue.count:
                    return False
            self.queue.enqueue(jobs.drain, description="wake-up: claim and apply pending deliveries",
                               job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)
        except redis.RedisError as exc:
            raise TransientError(f"could not wake a worker: {exc}") from exc
        return True

    def woken(self) -> None:
        """A wake-up started: the deliveries stored from now on need a new one."""
        self.connection.delete(WAKE_KEY)

    def enqueue_rows(self, event_ids: Sequence[int]) -> str:
        """A job for these inbox rows in particular (they are still claimed like any others)."""
        try:
            job = self.queue.enqueue(jobs.process_events, list(event_ids), description=f"inbox {_span(event_ids)}",
                                     job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue {len(event_ids)} deliveries: {exc}") from exc
        return job.id

    @staticmethod
    def describe_current_job(description: str) -> None:
        """Say in the dashboard what the running job turned out to do (which deliveries): RQ saves
        the job, description included, when it ends."""
        job = get_current_job()
        if job is not None:
            job.description = description

    def enqueue_flush(self, delay: float | None = None) -> str:
        """Put a Salesforce flush job on the CRM queue, now or after ``delay`` seconds; returns its id.

        Whether one is needed is ``sync.salesforce.schedule``'s decision.
        """
        options = {"description": "Salesforce flush", "job_timeout": FLUSH_JOB_TIMEOUT, "result_ttl": RESULT_TTL,
                   "failure_ttl": FAILURE_TTL}
        try:
            job = _now_or_later(self.crm_queue, jobs.flush_crm, delay, options)
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue a Salesforce flush: {exc}") from exc
        return job.id

    def enqueue_backfill(self, run_id: int, description: str) -> str:
        """Put (the next slice of) backfill ``run_id`` on the backfill queue; returns the job's id."""
        try:
            job = self.backfill_queue.enqueue(jobs.backfill, run_id, description=description,
                                              job_timeout=BACKFILL_JOB_TIMEOUT, result_ttl=RESULT_TTL,
                                              failure_ttl=FAILURE_TTL)
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue backfill #{run_id}: {exc}") from exc
        return job.id

    def enqueue_notifications(self, delay: float | None = None) -> bool:
        """Make sure a job that posts the due notifications is on its way, now or in ``delay``
        seconds; True when this call enqueued it. Its arguments are none: the rows are in the
        database. Raises ``TransientError`` when Redis cannot take it (the housekeeping asks again)."""
        mark, hold = (NOTIFY_KEY, WAKE_TTL) if not delay else (NOTIFY_LATER_KEY, int(delay) + WAKE_TTL)
        options = {"description": "notifications: post the due ones", "job_timeout": NOTIFY_JOB_TIMEOUT,
                   "result_ttl": RESULT_TTL, "failure_ttl": FAILURE_TTL, "meta": {"mark": mark}}
        try:
            if not self.connection.set(mark, "1", nx=True, ex=hold):
                return False
            _now_or_later(self.notify_queue, jobs.send_notifications, delay, options)
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue the notifications' job: {exc}") from exc
        return True

    def notifications_taken(self) -> None:
        """A send job started: notifications written from now on need another (its own mark goes)."""
        job = get_current_job()
        self.connection.delete(job.meta.get("mark", NOTIFY_KEY) if job is not None else NOTIFY_KEY)

    @staticmethod
    def report_progress(text: str) -> None:
        """Show the running job's progress in the dashboard now (its metadata: ``progress``)."""
        job = get_current_job()
        if job is not None:
            job.meta["progress"] = text
            job.save_meta()

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc

    def counts(self) -> QueueCounts:
        """What the queue holds now, in three round trips.

        Only the living count: a worker whose process says it is alive (``ALIVE_KEY``), and a job
        running on one of those (RQ's registries keep a killed worker, and the job it held, for
        minutes after its death).
        """
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.llen(self.queue.key)
                pipe.zcard(self.queue.scheduled_job_registry.key)
                pipe.zcard(self.queue.failed_job_registry.key)
                pipe.zrangebyscore(self.queue.started_job_registry.key, time.time(), "+inf")
                queued, scheduled, failed, started = pipe.execute()
            names = [key.removeprefix(PartneroWorker.redis_worker_namespace_prefix)
                     for key in worker_keys(queue=self.queue)]
            executions = [_execution(member, self.connection) for member in started]
            with self.connection.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(ALIVE_KEY + name)
                for execution in executions:
                    pipe.hget(execution.key, "worker_name")
                found = pipe.execute()
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc
        alive = {name for name, there in zip(names, found) if there}
        running = sum(1 for worker in found[len(names):] if worker is not None and worker.decode() in alive)
        return QueueCounts(queued=queued, scheduled=scheduled, failed=failed, started=running, workers=len(alive))


def _execution(member: bytes, connection: redis.Redis) -> Execution:
    """The execution a started registry's member (``job id:execution id``) names."""
    job_id, _, execution_id = member.decode().rpartition(":")
    return Execution(execution_id, job_id, connection)


def _span(ids: Sequence[int]) -> str:
    return f"#{min(ids)}..#{max(ids)}" if len(ids) > 1 else f"#{ids[0]}" if ids else "(none)"


class _Housekeeping:
    """Runs ``housekeeping`` (the sweeper) from the worker's periodic maintenance step."""

    housekeeping: Callable[[], None] | None = None

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        if self.housekeeping is not None:
            try:
                self.housekeeping()
            except TransientError as exc:
                self.log.warning("housekeeping skipped, will try again: %s", exc)
            except Exception:  # housekeeping must never stop the worker
                self.log.exception("housekeeping failed; will try again at the next interval")

    @property
    def dequeue_timeout(self) -> int:
        # Wake up at least as often as maintenance is due, so an idle worker still sweeps.
        return max(1, min(self.worker_ttl - 15, self.maintenance_interval))


class ContextJob(Job):
    """An RQ job run with its worker's context: RQ calls ``job.func(*args, **kwargs)``, and for
    our jobs (``sync.worker.jobs.takes_context``) this ``func`` is the enqueued function with
    ``context`` bound first, so it runs as ``func(context, *args, **kwargs)``; any other function
    runs as RQ runs it. What is stored in Redis (the function's name, its arguments) is RQ's own:
    the context never leaves the process. The seam is RQ's public one: a worker's ``job_class``, and
    ``Job.func``, the callable ``Job.perform`` calls; the worker sets ``context`` on each job it is
    about to run (``PartneroWorker.execute_job``)."""

    context: Any = None

    @property
    def func(self):
        func = super().func
        return functools.partial(func, self.context) if jobs.takes_context(func) else func


class PartneroWorker(_Housekeeping, SimpleWorker):
    """RQ's worker that runs jobs in its own process, plus our housekeeping.

    It hands each of our jobs ``context`` (what its process built at its start: the services,
    ``sync.worker.jobs.Context``) as its first argument (``ContextJob``).

    Not forking a work horse per job saves milliseconds a job and keeps the database pool and
    the Salesforce session between jobs (see bench/README.md). On SIGTERM, as a PaaS sends to
    stop a process, it finishes the job in hand (a flush stops between calls), then exits; a
    second signal stops it at once.
    """

    job_class = ContextJob
    _alive: threading.Event | None = None

    def __init__(self, queues, *args, context: Any = None, **kwargs):
        super().__init__(queues, *args, **kwargs)
        self.context = context

    def execute_job(self, job: Job, queue: Queue) -> None:
        job.context = self.context
        super().execute_job(job, queue)

    def handle_warm_shutdown_request(self) -> None:
        request_stop()
        super().handle_warm_shutdown_request()

    def register_birth(self) -> None:
        super().register_birth()
        self._alive = threading.Event()
        threading.Thread(target=self._say_alive, args=(self._alive,), name="alive", daemon=True).start()

    def register_death(self) -> None:
        if self._alive is not None:
            self._alive.set()
        try:
            self.connection.delete(ALIVE_KEY + self.name)
        finally:
            super().register_death()

    def _say_alive(self, stop: threading.Event) -> None:
        """Until ``stop``: say every ``ALIVE_EVERY`` seconds that this process lives, in a thread of
        its own, so a long job does not silence it (RQ's heartbeat waits between jobs)."""
        while True:
            try:
                self.connection.set(ALIVE_KEY + self.name, os.getpid(), ex=ALIVE_TTL)
            except redis.RedisError:
                pass  # Redis away: the worker itself will notice and say so
            if stop.wait(ALIVE_EVERY):
                return

    def unsubscribe(self) -> None:
        # RQ sends UNSUBSCRIBE, then stops the thread that listens for its commands, counting on
        # Redis's reply to wake it. A thread that reads the reply before it is told to stop goes
        # back to waiting, up to a minute, for a subscription; and since redis-py 8.2, stop() waits
        # for the thread without a limit: the worker hung after SIGTERM. Told first, the thread
        # ends with the reply.
        if self.pubsub_thread is not None:
            _tell_to_stop(self.pubsub_thread)
        super().unsubscribe()


def _tell_to_stop(thread: PubSubWorkerThread) -> None:
    """Ask a pubsub thread to end after its current wait, without waiting for it."""
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=0)  # redis-py >= 8.2, where stop() also waits for the thread
    else:
        thread.stop()  # older ones only ask


_PR_SET_PDEATHSIG = 1


def children_die_with_this_process() -> None:
    """Make every child this process forks from now on (RQ's scheduler) get SIGTERM when this
    process dies, however it dies (SIGKILL included): else an orphaned scheduler goes on moving
    jobs, holding its lock, for minutes. Linux only (elsewhere, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getpid()

    def in_child() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # it died before the signal was asked for
            os.kill(os.getpid(), signal.SIGTERM)

    os.register_at_fork(after_in_child=in_child)
