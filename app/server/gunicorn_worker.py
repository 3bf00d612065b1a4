"""gunicorn's threaded worker, reading each request whole before a thread handles it.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as it is readable, and the
thread then blocks on the socket until the head and body have arrived: a client that sends a
few bytes and stalls (or trickles) holds a thread for as long as it likes, and a few dozen such
clients stop the web process. Here the worker's event loop reads every request into memory first,
without blocking (``app.server.framing`` says when it is whole), and hands it to a thread only then; a
request that has not fully arrived within ``REQUEST_SECONDS`` is answered 408 and closed. A slow
client costs a connection slot and its buffered bytes, never a thread.

A thread takes a request once it has arrived, but may not be free at once: the app finds the
time it arrived (``time.monotonic()``) in its WSGI environ under ``RECEIVED_AT``, so that its
answer can be due a fixed time after the arrival, however long it waited for a thread.

Closing is made non-blocking too: gthread closes a connection gracefully (its answer sent, it
waits for the client to close first, so that unread bytes do not reset the connection and lose
the answer) by blocking its event loop for up to two seconds, which a client that never closes
turns into a stall of the whole process. Here the event loop lingers on such sockets instead.
"""

from __future__ import annotations

import errno
import math
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

from app.server.framing import RequestFramer, Verdict
from sync.settings import MAX_BODY_BYTES

#: How long a request may take to arrive, from its connection being accepted (or, kept alive,
#: becoming readable again) to its last byte.
REQUEST_SECONDS = 10.0
#: How long a thread may wait on the socket for bytes the read-ahead did not hold (it holds the
#: whole request; this only bounds a framing the read-ahead got wrong).
THREAD_READ_SECONDS = 2.0
#: How long a closed connection is drained, waiting for the client to close its side.
LINGER_SECONDS = 2.0
#: Beyond this many lingering connections, new ones are closed at once.
MAX_LINGERING = 1000
_RECV = 256 * 1024
#: The WSGI environ's key for when the request had fully arrived (``time.monotonic()``).
RECEIVED_AT = "partnero.received_at"

_ANSWERS = {
    Verdict.BAD_REQUEST: (400, "Bad Request", "bad request"),
    Verdict.HEAD_TOO_LARGE: (431, "Request Header Fields Too Large", "request header fields too large"),
    None: (408, "Request Timeout", "request timeout"),
}


@dataclass
class _Reading:
    framer: RequestFramer
    deadline: float
    registered: bool = False
    continued: bool = False


class BoundedReads:
    """A connection's socket as gunicorn's parser reads it in a thread: no read waits past
    ``deadline``. A read that would is answered as the end of the stream, and ``expired`` is
    set so the connection is not used again."""

    def __init__(self, sock):
        self.sock = sock
        self.deadline = math.inf
        self.expired = False

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            return b""
        previous = self.sock.gettimeout()
        self.sock.settimeout(remaining if previous is None else min(previous, remaining))
        try:
            return self.sock.recv(size)
        except TimeoutError:
            self.expired = True
            return b""
        finally:
            self.sock.settimeout(previous)

    def gettimeout(self):
        return self.sock.gettimeout()

    def settimeout(self, value) -> None:
        self.sock.settimeout(value)


@dataclass
class _Handover:
    data: bytes
    complete: bool
    received_at: float
    reads: BoundedReads | None = field(default=None)


class _Connection(TConn):
    """gthread's connection, whose graceful close is the worker's non-blocking linger."""

    def __init__(self, worker: ReadAheadWorker, *args):
        super().__init__(*args)
        self.worker = worker

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class ReadAheadWorker(ThreadWorker):
    """``gthread`` with requests read whole, without blocking, before a thread takes them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reading: dict[object, _Reading] = {}
        self._lingering: dict[socket.socket, float] = {}
        self._handling = threading.local()  # the request a thread is on: its _Handover

    def load_wsgi(self) -> None:
        """The app, called with the arrival time of the thread's request in its environ."""
        super().load_wsgi()
        app = self.wsgi

        def with_arrival(environ, start_response):
            handover = getattr(self._handling, "handover", None)
            if handover is not None:
                environ[RECEIVED_AT] = handover.received_at
            return app(environ, start_response)

        self.wsgi = with_arrival

    # -- the event loop (main thread) ----------------------------------------------------------

    def accept(self, listener) -> None:
        """As gthread accepts, with connections that close without blocking the loop."""
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(_Connection(self, self.cfg, client, address, listener.getsockname()))

    def enqueue_req(self, conn) -> None:
        """Every way to a thread passes here (new, kept-alive and pipelined connections): read
        the request first."""
        conn.sock.setblocking(False)
        reading = _Reading(RequestFramer(MAX_BODY_BYTES), time.monotonic() + REQUEST_SECONDS)
        parser = conn.parser
        if parser is not None and hasattr(parser, "unreader"):
            ahead = parser.unreader.take_buffered()  # bytes a previous request read past its end
            if ahead:
                reading.framer.feed(ahead)
        self._reading[conn] = reading
        self._pump(conn, reading)

    def _on_readable(self, conn, _sock) -> None:
        reading = self._reading.get(conn)
        if reading is not None:
            self._pump(conn, reading)

    def _pump(self, conn, reading: _Reading) -> None:
        verdict = reading.framer.feed(b"")
        while verdict is Verdict.WAIT:
            try:
                data = conn.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            if not data:  # gone before the request was whole
                self._close(conn)
                return
            verdict = reading.framer.feed(data)
        if verdict is Verdict.WAIT:
            if reading.framer.expects_continue and not reading.continued:
                reading.continued = True
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            if not reading.registered:
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
                reading.registered = True
        elif verdict is Verdict.READY:
            self._forget(conn, reading)
            conn.data_ready = True
            conn.read_ahead = _Handover(bytes(reading.framer.buffer), reading.framer.complete, time.monotonic())
            super().enqueue_req(conn)
        else:
            self._answer(conn, verdict)

    def murder_pending(self) -> None:
        """Called on every turn of the loop: also answer requests that did not arrive in time,
        and end lingering that went on long enough."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, r in self._reading.items() if r.deadline <= now]:
            if self._reading[conn].framer.buffer:
                self._answer(conn, None)
            else:
                self._close(conn)  # not a byte: there is no request to answer
        for sock in [s for s, deadline in self._lingering.items() if deadline <= now]:
            self._end_linger(sock)

    def _answer(self, conn, verdict: Verdict | None) -> None:
        code, reason, error = _ANSWERS[verdict]
        body = b'{"error": "' + error.encode() + b'"}'
        self._send(conn, f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self._close(conn, graceful=True)

    def linger(self, sock: socket.socket) -> None:
        """Close ``sock`` gracefully without blocking: end our side now, read and drop what the
        client still sends until it closes too (or ``LINGER_SECONDS``), then close."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            if len(self._lingering) >= MAX_LINGERING:
                raise OSError("too many lingering connections")
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self._lingering[sock] = time.monotonic() + LINGER_SECONDS

    def _drain(self, sock: socket.socket) -> None:
        try:
            while sock.recv(_RECV):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(sock)  # the client closed its side (or reset): done

    def _end_linger(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        sock.close()

    @staticmethod
    def _send(conn, data: bytes) -> None:
        try:
            conn.sock.send(data)  # a few bytes: they fit in the socket's buffer
        except OSError:
            pass

    def _forget(self, conn, reading: _Reading) -> None:
        del self._reading[conn]
        if reading.registered:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, conn, graceful: bool = False) -> None:
        reading = self._reading.get(conn)
        if reading is not None:
            self._forget(conn, reading)
        self.nr_conns -= 1
        conn.close(graceful)

    # -- a thread ------------------------------------------------------------------------------

    def handle(self, conn):
        handover: _Handover = conn.read_ahead
        try:
            conn.sock.setblocking(True)
            conn.init()
        except Exception as exc:  # noqa: BLE001 - as gthread's own handle() treats it
            self.log.debug("could not start the connection: %s", exc)
            return False
        unreader = getattr(conn.parser, "unreader", None)
        if unreader is not None:
            if not isinstance(unreader.sock, BoundedReads):
                unreader.sock = BoundedReads(unreader.sock)
            handover.reads = unreader.sock
            handover.reads.deadline = time.monotonic() + THREAD_READ_SECONDS
            unreader.unread(handover.data)
        self._handling.handover = handover
        return super().handle(conn)

    def _keepalive_after(self, conn, keepalive):
        """Reuse a connection only when its request was read whole and nothing went amiss: the
        rest of a body refused from its head is never waited for."""
        handover: _Handover = conn.read_ahead
        if not handover.complete or (handover.reads is not None and handover.reads.expired):
            return False
        return super()._keepalive_after(conn, keepalive)
