"""The partnero-sync command, run through click against real databases and Redis."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from sync.cli import main
from tests.conftest import SECRETS


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_help_explains_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("migrate", "worker", "sweep", "status", "send-test", "dev", "mappings", "replay",
                    "crm-errors", "crm-retry", "crm-flush", "requeue-failed", "prune", "ledger"):
        assert command in result.output
    assert "PARTNERO_WEBHOOK_SECRET" in result.output


def test_migrate_is_safe_to_run_again(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/fresh.db"}
    first = run("migrate", env=env)
    assert first.exit_code == 0
    for table in ("webhook_events", "commission_entries", "partners", "customers", "transactions"):
        assert f"created table {table}\n" in first.output
    second = run("migrate", env=env)
    assert second.exit_code == 0
    assert "created" not in second.output and "is up to date" in second.output


def test_migrate_on_postgres_hides_the_password(pg_url):
    url = pg_url.replace("postgres@", "postgres:not-a-real-password@")
    result = run("migrate", env={"DATABASE_URL": url.replace("postgresql+psycopg", "postgres")})
    assert result.exit_code == 0
    assert "not-a-real-password" not in result.output and "postgres:***@" in result.output


def test_a_malformed_setting_is_one_clear_line():
    result = CliRunner().invoke(main, ["status"], env={"DATABASE_URL": "nonsense"})
    assert result.exit_code == 2
    assert "configuration error: DATABASE_URL must look like" in result.output


def test_status_counts_the_inbox(client, settings):
    from sync.partnero.samples import sample_delivery
    from tests.conftest import signed

    for event in ("partner.created", "partner.updated", "reward.paid"):
        body, headers = signed(sample_delivery(event))
        assert client.post("/webhooks/partnero", data=body, headers=headers).status_code == 202
    result = CliRunner().invoke(main, ["status"], env={"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url})
    lines = result.output.splitlines()
    assert lines[0] == "Inbox"
    assert dict(line.split() for line in lines[1:5]) == {"pending": "2", "processed": "0", "ignored": "1", "failed": "0"}
    assert "Salesforce           off (no SALESFORCE_ variables set): only the warehouse is synced" in lines
    # The receiver enqueued jobs, and no worker listens: that needs a person.
    assert result.exit_code == 1
    assert lines[-2] == "Needs attention"
    assert re.fullmatch(r"  - [12] jobs wait and no worker listens on the queue", lines[-1])


def test_sweep_reports_what_it_found(settings, redis_conn):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    result = run("sweep", env=env)
    assert result.exit_code == 0 and result.output.strip() == "nothing to sweep: every pending delivery is on its way"


def test_sweep_with_redis_down_says_so(settings):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": "redis://127.0.0.1:1/0"}
    from sync.store import db
    from sync.store.inbox import Delivery, DeliveryStatus, Inbox

    Inbox(db.engine_for(settings.database_url)).store_many([Delivery(b'{"event":"partner.created"}', "partner.created", DeliveryStatus.PENDING)])
    result = CliRunner().invoke(main, ["sweep", "--older-than", "0"], env=env)
    assert result.exit_code == 1
    assert "could not wake a worker" in result.output


def test_send_test_signs_and_posts_a_delivery(live_server, settings):
    env = {"PARTNERO_WEBHOOK_SECRET": ",".join(SECRETS)}
    result = run("send-test", "--url", f"{live_server}/webhooks/partnero", "--event", "customer.created", env=env)
    assert result.exit_code == 0
    assert result.output.startswith("202 ") and '"status":"queued"' in result.output
    assert result.output.endswith("}\n")  # one line, not the answer's line break written out


def test_send_test_with_a_wrong_secret_shows_the_refusal(live_server):
    result = CliRunner().invoke(
        main, ["send-test", "--url", f"{live_server}/webhooks/partnero"], env={"PARTNERO_WEBHOOK_SECRET": "wrong"}
    )
    assert result.exit_code == 1
    assert "401" in result.output and "signature does not match" in result.output


def test_send_test_without_a_secret_names_the_variable():
    result = CliRunner().invoke(main, ["send-test"], env={"PARTNERO_WEBHOOK_SECRET": ""})
    assert result.exit_code == 2
    assert "PARTNERO_WEBHOOK_SECRET is not set" in result.output


@pytest.mark.parametrize("command", [
    "worker", "sweep", "migrate", "status", "send-test", "dev", "mappings check", "mappings preview", "replay",
    "crm-errors", "crm-retry", "crm-flush", "requeue-failed", "prune",
])
def test_every_command_has_help(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
