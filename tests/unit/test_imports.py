"""Importing any module has no side effects: no files, no connections, no environment reads."""

import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Alembic runs this one as a script, inside a migration.
NOT_MODULES = {"sync.store.migrations.env"}
MODULES = sorted(
    {"app", "sync"}
    | {info.name for package in ("app", "sync") for info in pkgutil.walk_packages([str(ROOT / package)], f"{package}.")}
    - NOT_MODULES
)


def test_the_list_has_every_module():
    assert {"app.webhooks", "app.server.gunicorn_config", "sync.cli", "sync.salesforce.flush", "sync.mapping.spec",
            "sync.store.migrations.versions.0001_baseline"} <= set(MODULES)


def test_importing_every_module_touches_nothing(tmp_path):
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('a module opened a connection on import')\n"
        "socket.socket.connect = refuse\n"
        f"import importlib\nfor name in {MODULES!r}: importlib.import_module(name)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x", "REDIS_URL": "nonsense"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
