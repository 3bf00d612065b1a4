"""Intake: stores verified deliveries in shared commits, then wakes a worker to apply them.

A commit to disk is the cost of durability. Requests that arrive while one commit is under way
wait for the next, which then stores all of them in one transaction: under load many requests
share a commit, and no request is answered before the commit that holds its delivery.

Partnero gives up on an answer after five seconds. A request whose commit has not happened
``ANSWER_SECONDS`` after it arrived (however long it waited for a thread) is answered 503
instead, in time, so Partnero retries; should that commit still happen afterwards, the retry
finds the delivery stored and is a duplicate.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sync.core.errors import TransientError
from sync.pipeline.sweeper import Waker
from sync.store.inbox import Delivery, DeliveryStatus, Inbox, ReceiptStatus, Stored

log = logging.getLogger(__name__)

#: How soon after a request arrived its answer is due: Partnero's five seconds, less 1.5 for
#: the trip to us and back.
ANSWER_SECONDS = 3.5


@dataclass(frozen=True)
class Receipt:
    """The answer for one delivery: what happened to it, and its inbox row."""

    status: ReceiptStatus
    id: int


class Intake:
    """Group commit for the inbox: one writer thread per process, batches of waiting requests."""

    def __init__(
        self,
        inbox: Inbox,
        jobs: Waker,
        *,
        max_batch: int = 500,
        max_batch_bytes: int = 8 * 1024 * 1024,
        wait_seconds: float = ANSWER_SECONDS,
    ):
        self.inbox = inbox
        self.jobs = jobs
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.wait_seconds = wait_seconds
        self._pending: queue.SimpleQueue[tuple[Delivery, Future]] = queue.SimpleQueue()
        self._writer_pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, delivery: Delivery, received_at: float | None = None) -> Receipt:
        """Store ``delivery`` durably and wake a worker; returns once it is committed.

        Raises ``TransientError`` when it could not be stored, or not by ``wait_seconds`` after
        ``received_at`` (when its request arrived, by ``time.monotonic()``; default now): nothing
        may be acknowledged then.
        """
        self._ensure_writer()
        future: Future[Receipt] = Future()
        self._pending.put((delivery, future))
        due = (time.monotonic() if received_at is None else received_at) + self.wait_seconds
        try:
            return future.result(timeout=max(due - time.monotonic(), 0.0))
        except TimeoutError as exc:
            # It may still commit later (it stays in the writer's batch): a retry of the same
            # bytes then finds it stored, and is a duplicate.
            raise TransientError(f"inbox write not done {self.wait_seconds:g} s after the request arrived") from exc

    def _ensure_writer(self) -> None:
        # Started lazily, and again in a forked child, which inherits no threads.
        if self._writer_pid == os.getpid():
            return
        with self._lock:
            if self._writer_pid != os.getpid():
                self._pending = queue.SimpleQueue()
                threading.Thread(target=self._run, name="inbox-writer", daemon=True).start()
                self._writer_pid = os.getpid()

    def _run(self) -> None:
        pending = self._pending
        while True:
            batch = [pending.get()]
            size = len(batch[0][0].body)
            while len(batch) < self.max_batch and size < self.max_batch_bytes:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0].body)
            try:
                self.write(batch)
            except BaseException as exc:  # never leave a request waiting on a dead writer
                log.exception("inbox writer: unexpected error")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    def write(self, batch: list[tuple[Delivery, Future]]) -> None:
        """Store one batch in one transaction, wake a worker for the new pending rows, answer every waiter."""
        try:
            stored = self.inbox.store_many([delivery for delivery, _ in batch])
        except TransientError as exc:
            log.error("inbox write failed for %d deliveries: %s", len(batch), exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        except Exception:
            if len(batch) == 1:
                raise
            # Something about one delivery broke the shared transaction: store each on its own,
            # so one bad delivery does not fail the others.
            log.exception("inbox batch of %d failed; storing them one by one", len(batch))
            for item in batch:
                try:
                    self.write([item])
                except Exception as exc:
                    item[1].set_exception(exc)
            return

        self._wake(stored)
        answered: set[str] = set()
        for delivery, future in batch:
            fp = delivery.fingerprint
            future.set_result(_receipt(stored[fp], first=fp not in answered))
            answered.add(fp)

    def _wake(self, stored: dict[str, Stored]) -> None:
        new = sum(1 for s in stored.values() if s.created and s.status == DeliveryStatus.PENDING)
        if not new:
            return
        try:
            self.jobs.wake()
        except TransientError as exc:
            # Stored is what the answer depends on; the sweeper wakes a worker later.
            log.warning("%s; %d stored deliveries wait for the sweeper", exc, new)


def _receipt(stored: Stored, first: bool) -> Receipt:
    if not (stored.created and first):
        return Receipt(ReceiptStatus.DUPLICATE, stored.id)
    status = ReceiptStatus.QUEUED if stored.status == DeliveryStatus.PENDING else ReceiptStatus.IGNORED
    return Receipt(status, stored.id)

