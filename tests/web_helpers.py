"""The Procfile's web process started for a test, as a PaaS starts it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import SECRETS
from tests.test_processes import BIN, environment, free_port, procfile, start, stop, wait_for


@contextmanager
def procfile_web(directory: Path, answers: Callable[[int], bool], **variables: str) -> Iterator[int]:
    """The Procfile's web line with one gunicorn worker (as on a small dyno) and the test secrets,
    on SQLite in ``directory`` (migrated first) unless ``variables`` name a DATABASE_URL; yields
    its port once ``answers(port)``. It must then stop on SIGTERM, cleanly and without a traceback."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = environment(**{"DATABASE_URL": f"sqlite:///{directory}/web.db", "PARTNERO_WEBHOOK_SECRET": ",".join(SECRETS),
                         "PORT": str(port), "WEB_CONCURRENCY": "1", "LOG_FORMAT": "text", **variables})
    subprocess.run([str(BIN / "partnero-sync"), "migrate"], env=env, cwd=directory, check=True, capture_output=True)
    process = start(procfile()["web"], env, cwd=directory)
    try:
        wait_for(lambda: answers(port), what="the web process")
        yield port
    finally:
        output = stop(process)
        assert process.returncode == 0 and "Traceback" not in output, output
