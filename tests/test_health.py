"""/healthz answers "can I serve?": 200 while a backlog or refusals are only reported, with the figures."""

from __future__ import annotations

from sync.samples import CUSTOMER, PARTNER, sample_delivery
from tests.conftest import signed
from tests.test_salesforce_sync import deliver, password_login
from tests.warehouse_helpers import envelope


def test_healthz_stays_200_with_a_backlog_failures_and_refusals_and_reports_them(settings, fake, redis_conn):
    from app import create_app

    app = create_app(settings.with_overrides(salesforce=password_login(fake)))
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

    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok"}
    work = body["work"]
    assert work["queue_depth"] == 1 and work["workers"] == 0 and work["failed_jobs"] == 0  # one wake-up
    assert work["deliveries_failed"] == 1
    assert work["oldest_pending_age_seconds"] is not None and work["oldest_pending_age_seconds"] >= 0
    assert (work["crm_backlog"], work["crm_refused"]) == (1, 1)
    assert any("1 deliveries failed" in line for line in body["attention"])
    assert any("Salesforce refused 1 records" in line for line in body["attention"])
    assert any("no worker" in line for line in body["attention"])


def test_healthz_without_salesforce_reports_no_crm_figures(client):
    work = client.get("/healthz").get_json()["work"]
    assert work["crm_backlog"] is None and work["crm_refused"] is None
    assert work["queue_depth"] == 0 and work["oldest_pending_age_seconds"] is None


def _post(document: dict) -> dict:
    body, headers = signed(document)
    return {"data": body, "headers": headers}


def test_a_snapshot_names_a_database_error_that_has_no_message(app, monkeypatch):
    from sync import stats

    services = app.extensions["partnero"]

    def broken():
        raise RuntimeError()

    monkeypatch.setattr(services.inbox, "summary", broken)
    assert stats.take(services).unavailable["database"] == "RuntimeError"


def test_healthz_names_a_check_that_fails_without_a_message(app, monkeypatch):
    services = app.extensions["partnero"]

    def broken():
        raise RuntimeError()

    monkeypatch.setattr(services.inbox, "ping", broken)
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"] == "error: RuntimeError"
