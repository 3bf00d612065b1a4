"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each posting a new signed
Partnero delivery as soon as the previous answer has arrived.

Every request carries a distinct body (a sample delivery from ``sync.partnero.samples`` with unique ids),
signed with HMAC-SHA256 like Partnero signs it. Bodies are made from a few pre-rendered templates
by splicing in a fixed-width unique token and signing, a few microseconds per request, so the
generator stays light next to the server on a small machine.

Runs in its own process (``python -m bench.loadgen CONFIG_JSON``) and prints one JSON object with
its counts and latencies on stdout; ``bench/receiver.py`` drives it. Bounded: it sends nothing
after ``warmup + duration`` seconds nor beyond ``max_requests``, waits at most
``request_timeout`` for the answers still in flight, and then exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field

from sync.partnero.samples import sample_delivery

#: The event mix: all handled by partnero-sync, so each stored delivery gets a job.
EVENTS = (
    "partner.created",
    "customer.created",
    "transaction.created",
    "partner.updated",
    "customer.updated",
    "transaction.updated",
)
_TOKEN = "U" * 24  # replaced by a unique 24-character token in every body


def _templates() -> list[bytes]:
    """One JSON body per event type with the unique token where Partnero puts ids and keys."""
    out = []
    for event in EVENTS:
        kind = event.split(".", 1)[0]
        if kind == "partner":
            overrides = {"id": f"ptn_{_TOKEN}", "key": f"p-{_TOKEN}", "email": f"{_TOKEN}@example.com"}
        elif kind == "customer":
            overrides = {"key": f"acct_{_TOKEN}", "email": f"{_TOKEN}@example.com"}
        else:
            overrides = {"key": f"in_{_TOKEN}"}
        document = sample_delivery(event, **overrides)
        document["webhook_key"] = f"whk_{_TOKEN}"  # at least one token even if overrides change
        out.append(json.dumps(document, separators=(",", ":")).encode())
    return out


class Requests:
    """Makes the raw bytes of one new signed POST at a time."""

    def __init__(self, host: str, port: int, path: str, secret: str, nonce: str):
        self.templates = [t.split(_TOKEN.encode()) for t in _templates()]
        self.key = secret.encode()
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: partnero-bench\r\n"
            "Content-Type: application/json\r\nAccept: */*\r\n"
        ).encode()
        self.nonce = nonce[:10].rjust(10, "0")
        self.counter = itertools.count()

    def next(self) -> bytes:
        n = next(self.counter)
        token = f"{self.nonce}{n:014d}".encode()
        body = token.join(self.templates[n % len(self.templates)])
        digest = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        return b"%sContent-Length: %d\r\nSignature: %s\r\n\r\n%s" % (
            self.head, len(body), digest.encode(), body,
        )


@dataclass
class Stats:
    t_measure: float  # start of the measured window (perf_counter)
    t_stop: float  # end of the measured window: nothing is sent from then on
    max_requests: int
    sent: int = 0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # every answer, warm-up included
    measured_statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, measured window only
    transport_errors: dict[str, int] = field(default_factory=dict)
    measured_transport_errors: int = 0
    last_measured: float = 0.0
    connects: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, kind: str, now: float, sample: str = "") -> None:
        self.transport_errors[kind] = self.transport_errors.get(kind, 0) + 1
        if self.t_measure <= now < self.t_stop:
            self.measured_transport_errors += 1
        if sample and len(self.error_samples) < 5:
            self.error_samples.append(sample)


class Connection(asyncio.Protocol):
    """One keep-alive connection: send, read one answer, send the next."""

    def __init__(self, requests: Requests, stats: Stats, closed: asyncio.Future):
        self.requests = requests
        self.stats = stats
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at: float | None = None
        self.header_end = -1
        self.expected = -1
        self.status = 0
        self.close_after = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send_next()

    def send_next(self) -> None:
        now = time.perf_counter()
        stats = self.stats
        if now >= stats.t_stop or stats.sent >= stats.max_requests:
            self.sent_at = None
            self.transport.close()
            return
        stats.sent += 1
        data = self.requests.next()
        self.sent_at = time.perf_counter()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.header_end < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.header_end = end + 4
                if not self._parse_head(bytes(buffer[:end])):
                    return
            if len(buffer) < self.header_end + self.expected:
                return
            del buffer[: self.header_end + self.expected]
            self.header_end = -1
            self._answered()
            if self.close_after or self.transport.is_closing():
                self.transport.close()
                return
            if buffer:  # an answer nobody asked for: the connection is out of step
                self._fail("unexpected bytes")
                return
            self.send_next()
            return

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self._fail("bad status line", repr(lines[0][:80]))
            return False
        self.expected = -1
        self.close_after = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.expected = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.close_after = True
            elif name == b"transfer-encoding":
                self._fail("chunked answer (not supported)")
                return False
        if self.expected < 0:
            self._fail("answer without Content-Length")
            return False
        return True

    def _answered(self) -> None:
        now = time.perf_counter()
        stats = self.stats
        stats.answered += 1
        stats.statuses[self.status] = stats.statuses.get(self.status, 0) + 1
        if self.sent_at is not None and stats.t_measure <= now < stats.t_stop:
            stats.latencies.append(now - self.sent_at)
            stats.measured_statuses[self.status] = stats.measured_statuses.get(self.status, 0) + 1
            stats.last_measured = now
        self.sent_at = None

    def _fail(self, kind: str, sample: str = "") -> None:
        if self.sent_at is not None:
            self.stats.error(kind, time.perf_counter(), sample or kind)
            self.sent_at = None
        self.transport.abort()

    def timed_out(self) -> None:
        self._fail("timeout")

    def connection_lost(self, exc) -> None:
        if self.sent_at is not None:  # closed by the server with our request unanswered
            self.stats.error("connection lost", time.perf_counter(), repr(exc))
            self.sent_at = None
        if not self.closed.done():
            self.closed.set_result(None)


async def _slot(host: str, port: int, requests: Requests, stats: Stats, live: set,
                delay: float = 0.0) -> None:
    """Keeps one connection going until the window closes, reconnecting if the server closes it."""
    loop = asyncio.get_running_loop()
    # Connections opened all at once tend to be accepted by one gunicorn worker, and keep-alive
    # keeps them there; opened a few milliseconds apart, they spread over the workers better.
    await asyncio.sleep(delay)
    while time.perf_counter() < stats.t_stop and stats.sent < stats.max_requests:
        closed = loop.create_future()
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(requests, stats, closed), host, port
            )
        except OSError as exc:
            stats.error("connect failed", time.perf_counter(), repr(exc))
            await asyncio.sleep(0.05)
            continue
        stats.connects += 1
        live.add(conn)
        try:
            await closed
        finally:
            live.discard(conn)


async def _watchdog(stats: Stats, live: set, timeout: float) -> None:
    while True:
        await asyncio.sleep(0.25)
        now = time.perf_counter()
        for conn in list(live):
            if conn.sent_at is not None and now - conn.sent_at > timeout:
                conn.timed_out()


async def run(config: dict) -> dict:
    requests = Requests(config["host"], config["port"], config["path"], config["secret"],
                        config["nonce"])
    start = time.perf_counter()
    stats = Stats(
        t_measure=start + config["warmup"],
        t_stop=start + config["warmup"] + config["duration"],
        max_requests=config["max_requests"],
    )
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    live: set[Connection] = set()
    watchdog = asyncio.create_task(_watchdog(stats, live, config["request_timeout"]))
    slots = [
        asyncio.create_task(_slot(config["host"], config["port"], requests, stats, live,
                                  delay=i * config.get("connect_stagger", 0.0)))
        for i in range(config["connections"])
    ]
    # Bounded: the window, then at most one request time-out (the watchdog ends stragglers).
    await asyncio.wait(slots, timeout=config["warmup"] + config["duration"]
                       + config["request_timeout"] + 5)
    watchdog.cancel()
    for conn in list(live):
        if conn.transport is not None:
            conn._fail("not finished at exit")
    for task in slots:
        task.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "sent": stats.sent,
        "answered": stats.answered,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "accepted_202": stats.statuses.get(202, 0),
        "transport_errors": stats.transport_errors,
        "error_samples": stats.error_samples,
        "connects": stats.connects,
        "measured": _measured(stats),
        "loadgen_cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "wall_seconds": time.perf_counter() - start,
    }


def _measured(stats: Stats) -> dict:
    """The measured window's figures: its length, answers, errors, throughput and latencies."""
    end_measured = min(stats.t_stop, stats.last_measured or stats.t_stop)
    window = max(end_measured - stats.t_measure, 1e-9)
    lat = sorted(stats.latencies)
    ok = sum(n for code, n in stats.measured_statuses.items() if 200 <= code < 300)
    measured_errors = sum(stats.measured_statuses.values()) - ok + stats.measured_transport_errors
    return {
        "seconds": window,
        "requests": len(lat),
        "ok": ok,
        "errors": measured_errors,
        "statuses": {str(k): v for k, v in sorted(stats.measured_statuses.items())},
        "rps": ok / window,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p90_ms": percentile(lat, 90) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] if lat else 0.0) * 1e3,
        "mean_ms": (sum(lat) / len(lat) if lat else 0.0) * 1e3,
    }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    config.setdefault("nonce", os.urandom(5).hex())
    result = asyncio.run(run(config))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
