"""Reconciliation: Partnero's lists (the HTTPS stand-in) against the warehouse and the ledger, on
SQLite and PostgreSQL; the drift reported, then fixed through the pipeline webhooks take."""

from __future__ import annotations

import json

import sqlalchemy as sa

from sync.store import ledger
from sync.store.inbox import webhook_events
from tests.partnero_helpers import at, backfill, cli, cli_env, make_services, partner


def inbox_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(webhook_events)).scalar_one()
    finally:
        engine.dispose()


def drift_upstream(fake) -> None:
    """What changes in Partnero without a webhook reaching us."""
    fake.update("partners", "ptn_0", status="archived", updated_at=at(20))
    fake.update("partners", "ptn_4", email="elsewhere@example.com", updated_at=at(20))
    fake.add("partners", partner(50, updated_at=at(20)))
    fake.remove("customers", "cus_4")
    transaction = fake.find("transactions", "tx_1")
    fake.update("transactions", "tx_1", rewards=[{**transaction["rewards"][0], "status": "ok"}])
    fake.update("transactions", "tx_7", deleted_at=at(21))


def test_drift_is_reported_by_kind_changes_nothing_and_is_fixed_with_fix(program, database_url, redis_conn,
                                                                         redis_server_url):
    env = cli_env(database_url, redis_server_url, program)
    services = make_services(database_url, redis_server_url, program)
    backfill(services)
    clean = cli(env, "reconcile")
    assert clean.exit_code == 0, clean.output
    assert "no drift" in clean.output

    drift_upstream(program)
    before = inbox_count(database_url)
    report = cli(env, "reconcile")
    assert report.exit_code == 1, report.output
    lines = report.output.splitlines()
    expected = {
        ("partners", "ptn_0", "archived upstream"), ("partners", "ptn_4", "stale here"),
        ("partners", "ptn_50", "missing here"), ("customers", "cus_4", "not in Partnero"),
        ("transactions", "tx_1", "commission moved"), ("transactions", "tx_7", "deleted upstream"),
    }
    for entity, key, kind in expected:
        assert any(line.split()[:2] == [entity, key] and kind in line for line in lines), (entity, key, report.output)
    assert any("ptn_4" in line and "email, updated_at" in line for line in lines)
    assert "elsewhere@example.com" not in report.output  # names of columns, never their values
    assert "run with --fix" in report.output
    assert inbox_count(database_url) == before  # a report writes nothing

    as_json = json.loads(cli(env, "reconcile", "--json").output)
    assert {(d["entity"], d["key"], d["kind"]) for d in as_json["drift"]} == expected
    assert as_json["listed"] == {"partners": 8, "customers": 4, "transactions": 8}

    fixed = cli(env, "reconcile", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "fixed: 7 deliveries applied, 0 failed" in fixed.output  # tx_7: its state, then its refund
    after = cli(env, "reconcile")
    assert after.exit_code == 0 and "no drift" in after.output, after.output

    with services.inbox.engine.connect() as conn:
        assert services.warehouse.read(conn, "partners", "ptn_0")["status"] == "archived"
        assert services.warehouse.read(conn, "customers", "cus_4")["status"] == "deleted"
        assert services.warehouse.read(conn, "transactions", "tx_7")["refunded"] is True


def test_a_transaction_partnero_no_longer_lists_is_reported_and_never_refunded_by_fix(
        program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program)
    services = make_services(database_url, redis_server_url, program)
    backfill(services)
    program.remove("transactions", "tx_4")
    report = json.loads(cli(env, "reconcile", "--json").output)
    [found] = report["drift"]
    assert (found["key"], found["kind"]) == ("tx_4", "not in Partnero")
    assert "never inferred from absence" in found["reason"]
    fixed = cli(env, "reconcile", "--fix")
    assert fixed.exit_code == 1 and "1 left for a person" in fixed.output
    with services.inbox.engine.connect() as conn:
        assert services.warehouse.read(conn, "transactions", "tx_4")["refunded"] is False
        assert [e["entry_type"] for e in ledger.entries(conn, "tx_4")] == ["commission"]  # nothing reversed


def test_an_object_the_mappings_cannot_apply_is_reported_with_the_reason_and_fails_alone(
        program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program)
    backfill(make_services(database_url, redis_server_url, program))
    program.update("transactions", "tx_2", amount="plenty")
    report = cli(env, "reconcile", "--json")
    [found] = json.loads(report.output)["drift"]
    assert (found["key"], found["kind"]) == ("tx_2", "cannot be applied")
    assert "transaction.yml" in found["reason"] and "plenty" not in found["reason"]
    fixed = cli(env, "reconcile", "--fix")
    assert fixed.exit_code == 1 and "1 failed" in fixed.output


def test_reconcile_reads_every_page_when_partnero_pages_fewer_than_asked(program, database_url, redis_conn,
                                                                        redis_server_url):
    program.page_cap = 15  # Partnero's default page, whatever the 250 asked for
    for i in range(7, 33):
        program.add("partners", partner(i))
    env = cli_env(database_url, redis_server_url, program)
    backfill(make_services(database_url, redis_server_url, program), page_size=250)
    program.requests.clear()
    result = cli(env, "reconcile", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["listed"] == {"partners": 33, "customers": 5, "transactions": 8} and report["drift"] == []
    # Every partner was seen on a page: none was looked up on its own.
    assert [path for _, path, _ in program.requests if path.startswith("/v1/partners/")] == []
    assert [q["page"] for _, path, q in program.requests if path == "/v1/partners"] == ["1", "2", "3"]
