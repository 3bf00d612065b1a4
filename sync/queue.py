"""Everything that knows RQ's API: the connection, enqueueing inbox rows, the worker."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.worker import SimpleWorker

from sync.errors import TransientError

log = logging.getLogger(__name__)

QUEUE_NAME = "partnero"
#: Results of finished jobs stay a day, so the dashboard shows recent work.
RESULT_TTL = 24 * 3600
JOB_TIMEOUT = 300
_ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def connect(url: str) -> redis.Redis:
    """A Redis client for RQ; short time-outs so a missing Redis is noticed, not waited on."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )


#: Redis key naming the job that carries an inbox row, so the sweeper can tell a lost row from
#: one that is waiting its turn.
ROW_KEY = "partnero-sync:inbox-row:{}"
#: Deliveries per job at most: a job's writes share one SQL transaction.
BATCH_SIZE = 200
#: The jobs, named by path (RQ imports them in the worker), so this module need not import them.
PROCESS_EVENTS = "sync.jobs.process_events"
FLUSH_CRM = "sync.jobs.flush_crm"
#: Salesforce flushes run on a queue of their own, after the deliveries' (see ``sync.flushing``).
CRM_QUEUE_NAME = "partnero-crm"
FLUSH_JOB_TIMEOUT = 300

#: What RQ raises inside a job to interrupt it (its time-out): never the fault of the data in hand.
INTERRUPTIONS: tuple[type[BaseException], ...] = (JobTimeoutException,)

#: Set when the worker is asked to stop (SIGTERM): long jobs (a flush) stop between steps.
_stopping = threading.Event()


def stop_requested() -> bool:
    """Whether this process's worker was asked to stop, so the job in hand should wrap up."""
    return _stopping.is_set()


class JobQueue:
    """The ``partnero`` queue: jobs that each process a batch of inbox rows."""

    def __init__(self, connection: redis.Redis, name: str = QUEUE_NAME):
        self.connection = connection
        self.queue = Queue(name, connection=connection)
        self.crm_queue = Queue(CRM_QUEUE_NAME, connection=connection)

    def enqueue_events(self, events: Sequence[tuple[int, str]]) -> list[str]:
        """Enqueue jobs for (row id, event type) pairs, up to BATCH_SIZE rows a job, in one round trip.

        Returns the job ids. Raises ``TransientError`` when Redis cannot take them; the rows then
        stay pending for the sweeper.
        """
        if not events:
            return []
        batches = [list(events[i : i + BATCH_SIZE]) for i in range(0, len(events), BATCH_SIZE)]
        data = []
        for batch in batches:
            ids = [event_id for event_id, _ in batch]
            data.append(Queue.prepare_data(
                PROCESS_EVENTS,
                args=(ids,),
                job_id=f"partnero-{uuid.uuid4().hex[:16]}",
                description=describe(batch),
                timeout=JOB_TIMEOUT,
                result_ttl=RESULT_TTL,
            ))
        try:
            with self.connection.pipeline() as pipe:
                jobs = self.queue.enqueue_many(data, pipeline=pipe)
                for job, batch in zip(jobs, batches):
                    for event_id, _ in batch:
                        pipe.set(ROW_KEY.format(event_id), job.id, ex=RESULT_TTL)
                pipe.execute()
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue {len(events)} deliveries: {exc}") from exc
        return [job.id for job in jobs]

    def waiting(self, event_ids: Iterable[int]) -> set[int]:
        """The rows among ``event_ids`` whose job is still queued, running or scheduled."""
        ids = list(event_ids)
        if not ids:
            return set()
        try:
            job_ids = self.connection.mget([ROW_KEY.format(i) for i in ids])
            known = [(i, j.decode()) for i, j in zip(ids, job_ids) if j is not None]
            jobs = Job.fetch_many([j for _, j in known], connection=self.connection)
            alive = set()
            for (event_id, _), job in zip(known, jobs):
                if job is not None and job.get_status(refresh=False) in _ALIVE:
                    alive.add(event_id)
            return alive
        except redis.RedisError as exc:
            raise TransientError(f"could not read job states: {exc}") from exc

    def enqueue_flush(self, delay: float | None = None) -> str:
        """Put a Salesforce flush job on the CRM queue, now or after ``delay`` seconds; returns its id.

        Whether one is needed is ``sync.flushing``'s decision.
        """
        options = {"description": "Salesforce flush", "job_timeout": FLUSH_JOB_TIMEOUT, "result_ttl": RESULT_TTL}
        try:
            if delay:
                job = self.crm_queue.enqueue_in(timedelta(seconds=delay), FLUSH_CRM, **options)
            else:
                job = self.crm_queue.enqueue(FLUSH_CRM, **options)
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue a Salesforce flush: {exc}") from exc
        return job.id

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc

    def counts(self) -> QueueCounts:
        """What the queue holds now, read in one round trip."""
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.llen(self.queue.key)
                pipe.zcard(self.queue.scheduled_job_registry.key)
                pipe.zcard(self.queue.failed_job_registry.key)
                pipe.zcard(self.queue.started_job_registry.key)
                queued, scheduled, failed, started = pipe.execute()
            workers = Worker.count(connection=self.connection, queue=self.queue)
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc
        return QueueCounts(queued=queued, scheduled=scheduled, failed=failed, started=started, workers=workers)


@dataclass(frozen=True)
class QueueCounts:
    queued: int  # waiting for a worker
    scheduled: int  # retries waiting for their time
    failed: int  # jobs in RQ's failed registry
    started: int  # running now
    workers: int  # workers listening on the queue


def describe(batch: Sequence[tuple[int, str]]) -> str:
    """What the dashboard shows for a job: event types and inbox rows, never payload text.

    rq-dashboard renders descriptions unescaped, so an event type is shown only when it looks like
    one (mapped event types always do).
    """
    ids = [event_id for event_id, _ in batch]
    kinds = [kind if _EVENT_TYPE.match(kind) else "(unnamed event)" for _, kind in batch]
    if len(batch) == 1:
        return f"{kinds[0]} (inbox #{ids[0]})"
    summary = ", ".join(f"{kind} x{n}" for kind, n in sorted(Counter(kinds).items()))
    return f"{len(batch)} deliveries: {summary} (inbox #{min(ids)}..#{max(ids)})"


_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,48}\.[a-z][a-z0-9_]{0,48}$")


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


class PartneroWorker(_Housekeeping, SimpleWorker):
    """RQ's worker that runs jobs in its own process, plus our housekeeping.

    Not forking a work horse per job saves milliseconds a job and keeps the database pool and
    the Salesforce session between jobs (see bench/README.md). On SIGTERM, as a PaaS sends to
    stop a process, it finishes the job in hand (a flush stops between calls), then exits; a
    second signal stops it at once.
    """

    def handle_warm_shutdown_request(self) -> None:
        _stopping.set()
        super().handle_warm_shutdown_request()
