"""Everything that knows RQ's API: the connection, enqueueing inbox rows, the worker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.worker import HerokuWorker, SimpleWorker

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


def job_id(event_id: int) -> str:
    return f"partnero-event-{event_id}"


class JobQueue:
    """The ``partnero`` queue of inbox rows to process."""

    def __init__(self, connection: redis.Redis, name: str = QUEUE_NAME):
        self.connection = connection
        self.queue = Queue(name, connection=connection)

    def enqueue_events(self, events: Sequence[tuple[int, str]]) -> None:
        """Enqueue one job per (row id, event type), in one round trip.

        Raises ``TransientError`` when Redis cannot take them; the rows stay pending for the sweeper.
        """
        if not events:
            return
        from sync.jobs import process_event

        data = [
            Queue.prepare_data(
                process_event,
                args=(event_id,),
                job_id=job_id(event_id),
                # What the dashboard shows: the row and its type, never payload text.
                description=f"{event_type} (inbox #{event_id})",
                timeout=JOB_TIMEOUT,
                result_ttl=RESULT_TTL,
            )
            for event_id, event_type in events
        ]
        try:
            with self.connection.pipeline() as pipe:
                self.queue.enqueue_many(data, pipeline=pipe)
                pipe.execute()
        except redis.RedisError as exc:
            raise TransientError(f"could not enqueue {len(events)} job(s): {exc}") from exc

    def waiting(self, event_ids: Iterable[int]) -> set[int]:
        """The rows among ``event_ids`` whose job is still queued, running or scheduled."""
        ids = list(event_ids)
        if not ids:
            return set()
        try:
            jobs = Job.fetch_many([job_id(i) for i in ids], connection=self.connection)
            alive = set()
            for event_id, job in zip(ids, jobs):
                if job is not None and job.get_status(refresh=False) in _ALIVE:
                    alive.add(event_id)
            return alive
        except redis.RedisError as exc:
            raise TransientError(f"could not read job states: {exc}") from exc

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc


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


class PartneroWorker(_Housekeeping, HerokuWorker):
    """RQ's worker for a PaaS, plus our housekeeping.

    On SIGTERM it lets the job in hand finish if it can (a PaaS allows some seconds); the work
    horse ignores the SIGTERM a PaaS sends to every process, so no job is cut off mid-write.
    """


class InProcessWorker(_Housekeeping, SimpleWorker):
    """Runs jobs in its own process: for the single-process development mode."""
