"""/healthz answers "can I serve?": 200 while a backlog or refusals are only reported. Anyone gets
the dependencies and two index-backed figures; the operator, the full report."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

from sync.partnero.samples import CUSTOMER, PARTNER, sample_delivery
from tests.conftest import signed
from tests.ops_helpers import AUTH, OPS
from tests.test_salesforce_sync import deliver, password_login
from tests.warehouse_helpers import envelope


def test_healthz_stays_200_with_a_backlog_failures_and_refusals_and_reports_them(settings, fake, redis_conn):
    from app import create_app

    app = create_app(settings.with_overrides(salesforce=password_login(fake), dashboard=OPS))
    services = app.extensions["partnero"]
    fake.reject(lambda record: True, "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]",
                sobject="Contact")
    # A partner Salesforce refuses, and a customer that then waits for it.
    deliver(services, envelope("partner.created", "2026-03-14T09:21:06Z", **PARTNER),
            envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER))
    services.flusher().flush()
    client = app.test_client()
    # One delivery waits in the queue; one failed for good.
    assert client.post("/webhooks/partnero", **_post(sample_delivery("partner.created", id="ptn_2"))).status_code == 202
    bad = sample_delivery("transaction.created", key="tx_bad")
    bad["data"]["amount"] = "12,50"
    receipt = client.post("/webhooks/partnero", **_post(bad)).get_json()
    events = services.inbox.claim(1, ids=[receipt["id"]])
    assert services.processor.process_batch(events).failed

    response = client.get("/healthz", headers=AUTH)  # the operator's full report
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok"}
    assert body["salesforce"].startswith("on: password login to ")
    work = body["work"]
    assert work["queue_depth"] == 1 and work["workers"] == 0 and work["failed_jobs"] == 0  # one wake-up
    assert work["deliveries_failed"] == 1
    assert work["oldest_pending_age_seconds"] is not None and work["oldest_pending_age_seconds"] >= 0
    assert (work["crm_backlog"], work["crm_refused"]) == (1, 1)
    assert any("1 deliveries failed" in line for line in body["attention"])
    assert any("Salesforce refused 1 records" in line for line in body["attention"])
    assert any("no worker" in line for line in body["attention"])

    # Anyone: the dependencies and the inbox's figures, nothing that names a user or an error.
    public = client.get("/healthz")
    assert public.status_code == 200
    assert public.get_json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok"},
        "salesforce": "on",
        "work": {"deliveries_pending": 1, "deliveries_failed": 1,
                 "oldest_pending_age_seconds": public.get_json()["work"]["oldest_pending_age_seconds"]},
    }
    assert public.get_json()["work"]["oldest_pending_age_seconds"] >= 0
    text = public.get_data(as_text=True)
    for private in (services.settings.salesforce.username, "Required fields", "12,50", "not a number"):
        assert private not in text


def test_healthz_without_salesforce_reports_no_crm_figures(settings, redis_conn):
    from app import create_app

    client = create_app(settings.with_overrides(dashboard=OPS)).test_client()
    work = client.get("/healthz", headers=AUTH).get_json()["work"]
    assert work["crm_backlog"] is None and work["crm_refused"] is None
    assert work["queue_depth"] == 0 and work["oldest_pending_age_seconds"] is None
    public = client.get("/healthz").get_json()
    assert public["salesforce"] == "off"
    assert public["work"] == {"deliveries_pending": 0, "deliveries_failed": 0, "oldest_pending_age_seconds": None}


@pytest.mark.parametrize("credentials", [b"ops:wrong", b"someone:a-long-password-1", b"ops"])
def test_healthz_refuses_wrong_credentials(settings, redis_conn, credentials):
    from app import create_app

    client = create_app(settings.with_overrides(dashboard=OPS)).test_client()
    answer = client.get("/healthz", headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()})
    assert answer.status_code == 401
    assert "work" not in answer.get_json()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_public_answer_reads_the_inbox_by_an_index(app, settings):
    """On PostgreSQL, every statement the public answer sends reads a range of an index, by status:
    with sequential scans priced out, each scan is an index's, with a condition on the status (a
    count by status of the whole table would scan all of an index, without one)."""
    engine = app.extensions["partnero"].inbox.engine
    sent: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    inbox_reads = [(s, p) for s, p in sent if "webhook_events" in s and "count" in s.lower()]
    assert inbox_reads, sent
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in inbox_reads:
            plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
            scans = [i for i, line in enumerate(plan) if " Scan " in line]
            assert scans, plan
            for i in scans:
                assert "using ix_webhook_events_status" in plan[i], plan
                condition = plan[i + 1] if i + 1 < len(plan) else ""
                assert "Index Cond: " in condition and "status" in condition, plan


def _post(document: dict) -> dict:
    body, headers = signed(document)
    return {"data": body, "headers": headers}


def test_a_snapshot_names_a_database_error_that_has_no_message(app, monkeypatch):
    from sync.ops.snapshot import take

    services = app.extensions["partnero"]

    def broken(program=None):
        raise RuntimeError()

    monkeypatch.setattr(services.inbox, "summary", broken)
    assert take(services).unavailable["database"] == "RuntimeError"


def test_healthz_names_a_check_that_fails_without_a_message_to_the_operator_only(settings, redis_conn, monkeypatch):
    from app import create_app

    app = create_app(settings.with_overrides(dashboard=OPS))
    services = app.extensions["partnero"]

    def broken():
        raise RuntimeError()

    monkeypatch.setattr(services.inbox, "ping", broken)
    answer = app.test_client().get("/healthz", headers=AUTH)
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"] == "error: RuntimeError"
    public = app.test_client().get("/healthz")
    assert public.status_code == 503
    assert public.get_json() == {"status": "unavailable", "checks": {"database": "down", "redis": "ok"},
                                 "salesforce": "off"}
