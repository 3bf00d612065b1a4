"""The files around the code say what is true: the licence setup.cfg names, the versions the
README says are tested (those of the servers the suite runs against), and what a buildpack
installs."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys

import redis
import sqlalchemy as sa

from sync.store import db
from tests.conftest import ROOT
from tests.test_processes import BIN


def _tested_with() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Supported versions"):].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|", table, re.MULTILINE)
    return {name: tested.strip() for name, tested in rows}


def test_the_licence_setup_cfg_names_is_there():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 The partnero-sync authors" in text
    assert "Permission is hereby granted, free of charge" in text


def test_the_readme_names_the_versions_the_suite_runs_against(pg_url, mariadb_url, redis_server_url):
    tested = _tested_with()
    assert set(tested) >= {"Python", "PostgreSQL", "MariaDB", "Redis"}, tested
    with db.engine_for(pg_url).connect() as conn:
        postgres = conn.execute(sa.text("SHOW server_version")).scalar()
    with db.engine_for(mariadb_url).connect() as conn:
        mariadb = conn.execute(sa.text("SELECT VERSION()")).scalar()
    redis_version = redis.Redis.from_url(redis_server_url).info("server")["redis_version"]
    running = {
        "Python": "{}.{}.{}".format(*sys.version_info[:3]),
        "PostgreSQL": postgres.split()[0],
        "MariaDB": mariadb.split("-")[0],
        "Redis": redis_version,
    }
    for name, version in running.items():
        # The release line ("15" for PostgreSQL, "10.11" for MariaDB): a patch release a fresh
        # machine's packages bring must not fail the suite.
        assert tested[name] == ".".join(version.split(".")[:1 if name == "PostgreSQL" else 2]), (
            name, tested[name], version)


def test_a_buildpacks_install_installs_this_project():
    report = subprocess.run(
        [str(BIN / "pip"), "install", "--dry-run", "--no-deps", "--quiet", "--report", "-", "-r", "requirements.txt"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert [item["metadata"]["name"] for item in json.loads(report.stdout)["install"]] == ["partnero-sync"]
