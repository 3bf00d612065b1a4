"""Salesforce sync through simple-salesforce's real code path, against the local HTTPS stand-in."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from rq import Queue

from sync.cli import main
from sync.core.errors import TransientError
from sync.partnero.samples import CUSTOMER, PARTNER, TRANSACTION, sample_delivery
from sync.services import Services
from sync.settings import SalesforceSettings
from sync.store.inbox import Delivery, DeliveryStatus
from sync.store.outbox import crm_outbox
from sync.worker.process import build_worker
from sync.worker.queues import QUEUE_NAME, PartneroWorker
from tests.conftest import salesforce_env
from tests.warehouse_helpers import envelope


def password_login(fake) -> SalesforceSettings:
    return SalesforceSettings(mode="password", username=fake.username, password=fake.password,
                              security_token=fake.security_token, domain=fake.login_domain)


@pytest.fixture
def services(settings, fake, redis_conn) -> Services:
    return Services.build(settings.with_overrides(salesforce=password_login(fake)), redis_conn)


def deliver(services: Services, *documents) -> None:
    bodies = [json.dumps(d).encode() for d in documents]
    stored = services.inbox.store_many([Delivery(b, json.loads(b)["event"], DeliveryStatus.PENDING) for b in bodies])
    events = services.inbox.claim(len(stored), ids=[s.id for s in stored.values()])
    result = services.processor.process_batch(events)
    assert not result.failed, result.failed


def outbox_rows(services: Services) -> dict[tuple[str, str], dict]:
    with services.inbox.engine.connect() as conn:
        return {(r.object, r.external_id): dict(r._mapping) for r in conn.execute(sa.select(crm_outbox))}


def make_due(services: Services) -> None:
    """Let the retry delays pass."""
    with services.inbox.engine.begin() as conn:
        conn.execute(crm_outbox.update().values(next_attempt_at=None))


def partner(**changes):
    # Sent when it was last updated: a version far ahead of its delivery would not be believed.
    data = {**PARTNER, **changes}
    return envelope("partner.created", data["updated_at"], **data)


def test_the_three_entities_become_their_salesforce_records(services, fake):
    deliver(services, partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER),
            envelope("transaction.created", "2026-03-14T10:15:31Z", **TRANSACTION))
    report = services.flusher().flush()
    assert report.synced == 3 and report.calls == 3

    contact = fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")
    assert contact["Email"] == "maria@techreviews.io"
    assert (contact["FirstName"], contact["LastName"]) == ("Maria", "Lopez")
    assert contact["Partnero_Status__c"] == "active"
    assert contact["Partnero_Commission_Total__c"] == 44.7

    account = fake.get("Account", "Partnero_Customer_Key__c", "acct_000481")
    assert account["Name"] == "Daniel Kim" and account["Partnero_Email__c"] == "daniel.kim@northwind.dev"
    assert account["Partnero_Partner__c"] == contact["Id"]

    sale = fake.get("Partnero_Transaction__c", "Partnero_Transaction_Key__c", TRANSACTION["key"])
    assert sale["Amount__c"] == 149.0 and sale["Currency__c"] == "USD" and sale["Action__c"] == "sale"
    assert sale["Status__c"] == "Active"
    assert sale["Partnero_Customer__c"] == account["Id"] and sale["Partnero_Partner__c"] == contact["Id"]

    rows = outbox_rows(services)
    assert {r["status"] for r in rows.values()} == {"synced"}
    assert rows[("Contact", "ptn_8c1e6f0a")]["salesforce_id"] == contact["Id"]


def test_a_refund_marks_the_sale_refunded_and_lowers_the_commission_total(services, fake):
    deliver(services, partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER),
            envelope("transaction.created", "2026-03-14T10:15:31Z", **TRANSACTION))
    services.flusher().flush()
    deliver(services, envelope("transaction.deleted", "2026-03-20T00:00:00Z", key=TRANSACTION["key"]))
    services.flusher().flush()
    sale = fake.get("Partnero_Transaction__c", "Partnero_Transaction_Key__c", TRANSACTION["key"])
    assert sale["Status__c"] == "Refunded" and sale["Amount__c"] == 149.0
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")["Partnero_Commission_Total__c"] == 0
    assert fake.count("delete") == 0  # nothing is hard-deleted by default


def test_one_flush_sends_every_changed_commission_total_however_many_changed(services, fake, monkeypatch):
    from sync.salesforce import flush

    monkeypatch.setattr(flush, "FOLD_BATCH", 2)  # folded two changes a transaction
    ids = [f"ptn_{i}" for i in range(5)]
    deliver(services, *(partner(id=i, email=f"{i}@example.com") for i in ids))
    services.flusher().flush()
    sales = [envelope("transaction.created", "2026-03-14T10:15:31Z",
                      **{**TRANSACTION, "key": f"tx_{i}", "partner": i,
                         "rewards": [{**TRANSACTION["rewards"][0], "key": f"tx_{i}", "partner": i}]})
             for i in ids]
    deliver(services, *sales)
    services.flusher().flush()
    assert [fake.get("Contact", "Partnero_Partner_Id__c", i)["Partnero_Commission_Total__c"] for i in ids] == [44.7] * 5


def test_an_empty_surname_falls_back_for_the_required_last_name(services, fake):
    deliver(services, partner(surname=""), partner(id="ptn_2", name=None, surname=None, email="x@y.io"))
    services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")["LastName"] == "Maria"
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_2")["LastName"] == "x@y.io"


def test_parents_go_first_within_a_flush(services, fake):
    # Delivered child first: the flush still sends Contact, then Account, then the transaction.
    deliver(services, envelope("transaction.created", "2026-03-14T10:15:31Z", **TRANSACTION),
            envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER), partner())
    report = services.flusher().flush()
    assert (report.synced, report.waiting, report.calls) == (3, 0, 3)
    kinds = [call.path.split("/")[-2] for call in fake.calls if call.kind == "collections"]
    assert kinds == ["Contact", "Account", "Partnero_Transaction__c"]


def test_a_child_whose_parent_has_not_arrived_waits_and_follows_it(services, fake):
    deliver(services, envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER))
    report = services.flusher().flush()
    assert report.waiting == 1 and report.synced == 0
    row = outbox_rows(services)[("Account", "acct_000481")]
    assert row["status"] == "waiting" and row["error_code"] == "INVALID_FIELD"
    assert "Foreign key external ID: ptn_8c1e6f0a not found" in row["error_message"]
    assert row["next_attempt_at"] is not None  # tried again by itself later

    deliver(services, partner())  # the parent arrives
    report = services.flusher().flush()
    assert report.synced == 2  # the partner, then the customer it woke
    assert fake.get("Account", "Partnero_Customer_Key__c", "acct_000481")["Partnero_Partner__c"]


def test_records_go_in_collections_of_200_and_versions_collapse(services, fake):
    deliver(services, *(partner(id=f"ptn_{i}", updated_at=f"2026-03-14T09:21:{i % 60:02d}.000000Z")
                        for i in range(450)))
    # Five versions of one partner pending at once: one write, the newest.
    deliver(services, *(partner(id="ptn_7", name=f"v{n}", updated_at=f"2026-04-0{n}T00:00:00.000000Z")
                        for n in range(1, 6)))
    report = services.flusher().flush()
    assert report.calls == 3 and report.synced == 450
    sizes = [call.records for call in fake.calls if call.kind == "collections"]
    assert sizes == [200, 200, 50]
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_7")["FirstName"] == "v5"
    assert services.flusher().flush().calls == 0  # nothing left


def test_one_refused_record_never_holds_back_the_others(services, fake):
    fake.reject(lambda r: r.get("Partnero_Partner_Id__c") == "ptn_bad", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "Partners from this domain are not allowed")
    deliver(services, *(partner(id=f"ptn_{i}") for i in range(5)), partner(id="ptn_bad"))
    report = services.flusher().flush()
    assert (report.synced, report.failed) == (5, 1)
    row = outbox_rows(services)[("Contact", "ptn_bad")]
    assert row["status"] == "failed" and row["error_code"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert row["error_message"] == "Partners from this domain are not allowed"

    calls = fake.count("collections")
    make_due(services)
    assert services.flusher().flush().calls == 0 and fake.count("collections") == calls  # not retried

    fake.unreject()
    deliver(services, partner(id="ptn_bad", name="Changed", updated_at="2026-05-01T00:00:00.000000Z"))
    assert services.flusher().flush().synced == 1  # the record changed: sent again


def test_cli_lists_crm_errors_and_retries_them(services, fake, settings):
    fake.reject(lambda r: True, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Region__c]", times=1)
    deliver(services, partner())
    services.flusher().flush()
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "MAPPINGS_DIR": str(settings.mappings_dir),
           **salesforce_env(fake)}
    listed = CliRunner().invoke(main, ["crm-errors"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "failed   Contact ptn_8c1e6f0a: REQUIRED_FIELD_MISSING: Required fields are missing: [Region__c]" in listed.output
    status = CliRunner().invoke(main, ["status"], env=env)
    assert status.exit_code == 1  # a refused record needs a person
    assert re.search(r"^Salesforce +on: password login to ", status.output, re.M)
    assert re.search(r"^  Contact +backlog 0, refused 1, synced 0$", status.output, re.M)
    assert "  - Salesforce refused 1 records: see `partnero-sync crm-errors`" in status.output
    retried = CliRunner().invoke(main, ["crm-retry"], env=env)
    assert retried.exit_code == 0 and "1 records will be sent again" in retried.output
    flushed = CliRunner().invoke(main, ["crm-flush"], env=env)
    assert flushed.exit_code == 0 and "1 synced" in flushed.output
    assert "no Salesforce errors" in CliRunner().invoke(main, ["crm-errors"], env=env).output


def test_transient_refusals_are_retried_later(services, fake):
    fake.fail_with = "UNABLE_TO_LOCK_ROW"
    fake.fail_rate = 1.0
    deliver(services, partner())
    report = services.flusher().flush()
    assert report.retrying == 1
    row = outbox_rows(services)[("Contact", "ptn_8c1e6f0a")]
    assert row["status"] == "pending" and row["error_code"] == "UNABLE_TO_LOCK_ROW" and row["next_attempt_at"]
    fake.fail_rate = 0.0
    assert services.flusher().flush().synced == 0  # not due yet: it waits its backoff
    make_due(services)
    assert services.flusher().flush().synced == 1


@pytest.mark.parametrize("outage", ["503", "refuse"])
def test_an_outage_leaves_a_backlog_that_drains_afterwards(services, fake, outage):
    deliver(services, *(partner(id=f"ptn_{i}") for i in range(30)))
    fake.outage = outage
    with pytest.raises(TransientError):
        services.flusher().flush()
    assert {r["status"] for r in outbox_rows(services).values()} == {"pending"}
    fake.outage = None
    make_due(services)
    assert services.flusher().flush().synced == 30
    assert len(fake.records("Contact")) == 30


def test_an_expired_session_is_renewed_and_the_call_repeated(services, fake):
    deliver(services, partner())
    services.flusher().flush()
    logins = fake.count("login")
    fake.expire_sessions()
    deliver(services, partner(id="ptn_2"))
    assert services.flusher().flush().synced == 1
    assert fake.count("login") == logins + 1


def test_a_fixed_session_that_expires_says_what_to_do_on_the_records_and_stops(settings, fake, redis_conn):
    session = SalesforceSettings(mode="session", instance_url=fake.instance_url, session_id=fake.issue_session())
    services = Services.build(settings.with_overrides(salesforce=session), redis_conn)
    deliver(services, partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER))
    fake.expire_sessions()
    report = services.flusher().flush()
    assert report.org_refusal is not None and "SALESFORCE_SESSION_ID cannot be renewed" in report.org_refusal.message
    assert fake.count("collections") == 1  # it stopped at the first refusal: the Accounts were not tried
    rows = outbox_rows(services)
    contact = rows[("Contact", "ptn_8c1e6f0a")]
    assert contact["status"] == "failed" and contact["error_code"] == "INVALID_SESSION_ID"
    assert "SALESFORCE_SESSION_ID cannot be renewed" in contact["error_message"]
    assert rows[("Account", "acct_000481")]["status"] == "pending"


def test_tls_is_always_verified(services, fake, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    deliver(services, partner())
    with pytest.raises(TransientError, match="could not reach Salesforce"):
        services.flusher().flush()
    assert fake.count("collections") == 0


def test_the_worker_flushes_after_processing(settings, fake, redis_conn):
    crm = settings.with_overrides(salesforce=password_login(fake))
    services = Services.build(crm, redis_conn)
    bodies = [json.dumps(d).encode() for d in (partner(), sample_delivery("customer.created"))]
    services.inbox.store_many([Delivery(b, json.loads(b)["event"], DeliveryStatus.PENDING) for b in bodies])
    services.queue.wake()
    build_worker(Services.build(crm, redis_conn), worker_class=PartneroWorker).work(burst=True)
    assert fake.get("Account", "Partnero_Customer_Key__c", "acct_000481") is not None
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    assert queue.failed_job_registry.count == 0


def test_with_salesforce_off_only_the_warehouse_syncs(settings, redis_conn, client):
    services = Services.build(settings, redis_conn)
    assert services.flusher() is None and services.processor.outbox is None
    deliver(services, partner())
    assert outbox_rows(services) == {}
    assert client.get("/healthz").get_json()["salesforce"] == "off"


def test_a_mapping_may_opt_in_to_hard_deletes(settings, fake, redis_conn, tmp_path):
    import shutil

    mappings = tmp_path / "mappings"
    shutil.copytree(settings.mappings_dir, mappings)
    path = mappings / "partner.yml"
    path.write_text(path.read_text().replace("  commission_total:", "  hard_delete: true\n  commission_total:"))
    services = Services.build(settings.with_overrides(salesforce=password_login(fake), mappings_dir=mappings),
                              redis_conn)
    deliver(services, partner())
    services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a") is not None
    deliver(services, envelope("partner.deleted", "2026-04-01T00:00:00Z", id="ptn_8c1e6f0a"))
    services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a") is None


def test_money_goes_out_exact(services, fake):
    deliver(services, partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER), envelope("transaction.created", "2026-03-14T10:15:31Z",
                                          **{**TRANSACTION, "amount": 0.1, "rewards": [
                                              {**TRANSACTION["rewards"][0], "amount": 29.997},
                                              {**TRANSACTION["rewards"][0], "amount": 0.003}]}))
    services.flusher().flush()
    contact = fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")
    assert Decimal(repr(contact["Partnero_Commission_Total__c"])) == Decimal("30")
    sale = fake.get("Partnero_Transaction__c", "Partnero_Transaction_Key__c", TRANSACTION["key"])
    assert Decimal(repr(sale["Amount__c"])) == Decimal("0.1")


@pytest.mark.parametrize("mode", ["session", "password", "jwt", "jwt-file", "client_credentials"])
def test_every_login_mode_syncs(settings, fake, redis_conn, tmp_path, mode):
    if mode == "session":
        login = SalesforceSettings(mode="session", instance_url=fake.instance_url, session_id=fake.issue_session())
    elif mode == "password":
        login = password_login(fake)
    elif mode.startswith("jwt"):
        key = fake.jwt_private_key
        if mode == "jwt-file":
            (tmp_path / "key.pem").write_text(key)
            login = SalesforceSettings(mode="jwt", username=fake.username, consumer_key=fake.consumer_key,
                                       private_key_file=str(tmp_path / "key.pem"), domain=fake.login_domain)
        else:
            login = SalesforceSettings(mode="jwt", username=fake.username, consumer_key=fake.consumer_key,
                                       private_key=key, domain=fake.login_domain)
    else:
        login = SalesforceSettings(mode="client_credentials", consumer_key=fake.consumer_key,
                                   consumer_secret=fake.consumer_secret, domain=fake.login_domain)
    services = Services.build(settings.with_overrides(salesforce=login), redis_conn)
    deliver(services, partner())
    assert services.flusher().flush().synced == 1
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")["LastName"] == "Lopez"


def test_a_wrong_password_is_reported_on_the_records_not_raised(settings, fake, redis_conn):
    login = SalesforceSettings(mode="password", username=fake.username, password="wrong-password-xyz",
                               security_token=fake.security_token, domain=fake.login_domain)
    services = Services.build(settings.with_overrides(salesforce=login), redis_conn)
    deliver(services, partner())
    report = services.flusher().flush()
    assert "Salesforce refused the password login" in report.org_refusal.message
    row = outbox_rows(services)[("Contact", "ptn_8c1e6f0a")]
    assert row["status"] == "failed" and row["error_code"] == "LOGIN_REFUSED"
    assert row["next_attempt_at"] is not None  # tried again by itself, after a long wait
    assert "wrong-password-xyz" not in row["error_message"]


def sale(key: str, sent_at: str, amount, status: str, currency: str = "USD", event: str = "transaction.created"):
    reward = {**TRANSACTION["rewards"][0], "key": key, "amount": amount, "status": status, "amount_units": currency}
    return envelope(event, sent_at, **{**TRANSACTION, "key": key, "amount_units": currency, "rewards": [reward]})


def commission(fake) -> tuple:
    contact = fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")
    return (contact["Partnero_Commission_Total__c"], contact["Partnero_Commission_Approved__c"],
            contact["Partnero_Commission_Pending__c"])


def test_the_contact_gets_owed_approved_and_pending_kept_current_as_statuses_move(services, fake):
    from sync.ops.snapshot import take

    # Two sales in USD, one in EUR: USD is the program's currency (the most used); EUR stays out.
    deliver(services, partner(), sale("in_1", "2026-03-14T10:15:31Z", 44.7, "review_period"),
            sale("in_2", "2026-03-15T10:00:00Z", 10, "ok"), sale("in_eur", "2026-03-16T10:00:00Z", 1000, "ok", "EUR"))
    services.flusher().flush()
    assert commission(fake) == (54.7, 10, 44.7)
    # The review period ends: the commission moves from pending to approved.
    deliver(services, sale("in_1", "2026-04-14T10:15:31Z", 44.7, "ok", event="transaction.updated"))
    services.flusher().flush()
    assert commission(fake) == (54.7, 54.7, 0)
    # Rejected, then the other sale refunded: nothing is owed any more.
    deliver(services, sale("in_1", "2026-04-15T10:15:31Z", 44.7, "rejected", event="transaction.updated"),
            envelope("transaction.deleted", "2026-04-16T00:00:00Z", key="in_2"))
    services.flusher().flush()
    assert commission(fake) == (0, 0, 0)
    # status says which currency Salesforce gets, and who earns in another.
    ledger = take(services, with_ledger=True).ledger
    assert (ledger.currency, ledger.configured, ledger.others) == ("USD", False, {"EUR": 1})


def test_partnero_currency_chooses_the_totals_salesforce_gets(settings, fake, redis_conn):
    services = Services.build(settings.with_overrides(salesforce=password_login(fake), currency="EUR"), redis_conn)
    deliver(services, partner(), sale("in_1", "2026-03-14T10:15:31Z", 44.7, "review_period"),
            sale("in_2", "2026-03-15T10:00:00Z", 10, "ok"), sale("in_eur", "2026-03-16T10:00:00Z", 1000.5, "ok", "EUR"))
    services.flusher().flush()
    assert commission(fake) == (1000.5, 1000.5, 0)
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "MAPPINGS_DIR": str(settings.mappings_dir),
           "PARTNERO_CURRENCY": "eur"}
    status = CliRunner().invoke(main, ["status"], env=env)
    assert re.search(r"^  program currency +EUR \(PARTNERO_CURRENCY\)$", status.output, re.M), status.output
    assert re.search(r"^  other currencies +USD: 1 partner \(left out of Salesforce; see `partnero-sync ledger "
                     r"PARTNER_ID`\)$", status.output, re.M), status.output
    report = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert report["ledger"] == {"program_currency": "EUR", "program_currency_from": "PARTNERO_CURRENCY",
                                "by_currency": {"EUR": {"transactions": 1, "partners": 1},
                                                "USD": {"transactions": 2, "partners": 1}},
                                "other_currencies": {"USD": 1}}
