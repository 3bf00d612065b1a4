"""What the benchmarks share: a fresh PostgreSQL database, worker processes, and the peak memory
of processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BIN = Path(sys.executable).parent


def salesforce_env(fake) -> dict[str, str]:
    """The variables of a password login to a Salesforce stand-in (tests/fakes/salesforce.py)."""
    return {"SALESFORCE_USERNAME": fake.username, "SALESFORCE_PASSWORD": fake.password,
            "SALESFORCE_SECURITY_TOKEN": fake.security_token, "SALESFORCE_DOMAIN": fake.login_domain}


def fresh_database(name: str) -> str:
    """Drop and create the database ``name``; returns its URL."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def start_workers(env: dict, count: int, new_session: bool = False) -> list[subprocess.Popen]:
    """``count`` ``partnero-sync worker`` processes (this venv's), their output dropped;
    ``new_session``: each in a process group of its own."""
    return [subprocess.Popen([str(BIN / "partnero-sync"), "worker"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=new_session) for _ in range(count)]


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM to every worker, then wait up to a minute for each to exit."""
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)


class PeakRss(threading.Thread):
    """The largest peak RSS among processes: each one's ``VmHWM`` (the kernel's high-water mark of
    its resident memory since its exec), read from /proc every 20 ms until they have all exited or
    ``stop()`` is called; the mark only grows, so the last read is the peak but for what grew in
    the last 20 ms. (Not ``ru_maxrss`` from ``wait4``: on Linux that also counts the memory of the
    benchmark process, which a child was forked from before its exec.)"""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.paths = [Path(f"/proc/{pid}/status") for pid in pids]
        self.peak_kb = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            alive = False
            for path in self.paths:
                try:
                    text = path.read_text()
                except OSError:
                    continue
                marks = [line for line in text.splitlines() if line.startswith("VmHWM:")]
                if marks:  # none: a zombie, exited, its memory gone
                    alive = True
                    self.peak_kb = max(self.peak_kb, int(marks[0].split()[1]))
            if not alive:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=1)

    @property
    def mb(self) -> float:
        return self.peak_kb / 1024
