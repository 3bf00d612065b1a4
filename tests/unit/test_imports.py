"""Importing any module has no side effects: no files, no connections, no environment reads."""

import subprocess
import sys

MODULES = [
    "app", "app.webhooks", "app.ops", "app.gunicorn_config", "sync", "sync.settings", "sync.signature",
    "sync.envelope", "sync.db", "sync.inbox", "sync.intake", "sync.queue", "sync.jobs", "sync.sweeper",
    "sync.worker", "sync.services", "sync.cli", "sync.local", "sync.samples", "sync.logs",
]


def test_importing_every_module_touches_nothing(tmp_path):
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('a module opened a connection on import')\n"
        "socket.socket.connect = refuse\n"
        f"for name in {MODULES!r}: __import__(name)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x", "REDIS_URL": "nonsense"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
