"""A worker told to stop stops listening for RQ's commands at once, however its threads interleave."""

from __future__ import annotations

import threading
import time

from sync.worker.queues import JobQueue, PartneroWorker


def test_the_worker_stops_listening_at_once_when_its_pubsub_thread_reads_the_reply_first(redis_conn):
    # RQ's worker listens for commands (stop a job, shut down) in a thread of its own. At the end
    # of work() it sends UNSUBSCRIBE, then stops that thread. On a loaded machine the main thread
    # can lose the CPU between the two, and the thread read Redis's reply first: it then went
    # back to waiting for a subscription, up to a minute, while stop() waited for it: the
    # worker hung after SIGTERM. Here the main thread is held right after UNSUBSCRIBE until the
    # thread has read the reply, so that interleaving happens every time.
    worker = PartneroWorker(JobQueue(redis_conn).queues, connection=redis_conn)
    worker.subscribe()
    pubsub, listener = worker.pubsub, worker.pubsub_thread
    assert pubsub.subscribed and listener.is_alive()
    send_unsubscribe = pubsub.unsubscribe

    def unsubscribe_then_lose_the_cpu(*args):
        sent = send_unsubscribe(*args)
        deadline = time.monotonic() + 5
        while pubsub.subscribed and time.monotonic() < deadline:  # the listener reads the reply
            time.sleep(0.01)
        assert not pubsub.subscribed, "the listener never read Redis's reply to UNSUBSCRIBE"
        return sent

    pubsub.unsubscribe = unsubscribe_then_lose_the_cpu
    stopping = threading.Thread(target=worker.unsubscribe, name="unsubscribe", daemon=True)
    started = time.monotonic()
    stopping.start()
    stopping.join(timeout=15)
    assert not stopping.is_alive(), "unsubscribe() still waits for the listener after 15 s"
    assert time.monotonic() - started < 6
    assert not listener.is_alive()
    assert pubsub.connection is None  # closed, its connection back in the pool
