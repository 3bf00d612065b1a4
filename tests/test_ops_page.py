"""/ops through Flask's test client: deliveries posted through the real receiver, processed by a
real RQ worker, on SQLite and PostgreSQL, with Salesforce as the local HTTPS stand-in."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import sqlalchemy as sa
from rq import Queue

from app import create_app
from app.ops import TOKEN_MAX_AGE
from sync.partnero.samples import sample_delivery
from sync.settings import DashboardSettings, SalesforceSettings
from sync.store import db
from sync.store.inbox import PRUNED_BODY, Inbox, webhook_events
from sync.worker.queues import CRM_QUEUE_NAME, QUEUE_NAME
from tests.conftest import DEAD_PG_URL, DEAD_REDIS_URL
from tests.ops_helpers import (
    AUTH,
    Page,
    fix_customer_identity,
    friend_customer,
    ops_settings,
    post,
    unparseable_amount,
    work,
)
from tests.test_salesforce_sync import password_login

#: What a browser sends with a form posted from one of the pages the test client gets.
SAME_ORIGIN = {**AUTH, "Origin": "http://localhost"}


@pytest.fixture
def settings(settings, tmp_path):
    return ops_settings(settings, tmp_path)


def get(client, path: str, **query) -> Page:
    response = client.get(path, query_string=query or None, headers=AUTH)
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "text/html"
    return Page(response.data)


def inbox_row(settings, event_id: int) -> dict:
    with db.engine_for(settings.database_url).connect() as conn:
        return dict(conn.execute(sa.select(webhook_events).where(webhook_events.c.id == event_id)).one()._mapping)


def replay(client, event_id: int, token: str | None, headers=SAME_ORIGIN):
    form = {} if token is None else {"token": token}
    return client.post(f"/ops/deliveries/{event_id}/replay", data=form, headers=headers)


# -- who may look ------------------------------------------------------------------------------


def test_ops_is_not_served_without_the_dashboards_credentials(settings, redis_conn):
    client = create_app(settings.with_overrides(dashboard=DashboardSettings())).test_client()
    for path in ("/ops", "/ops/", "/ops/deliveries/1"):
        assert client.get(path, headers=AUTH).status_code == 404
    assert client.post("/ops/deliveries/1/replay", headers=SAME_ORIGIN).status_code == 404


@pytest.mark.parametrize("authorization", [
    None,
    "Basic " + "b3BzOndyb25nLXBhc3N3b3JkLTE=",  # ops:wrong-password-1
    "Basic " + "b3RoZXI6YS1sb25nLXBhc3N3b3JkLTE=",  # other:a-long-password-1
    "Bearer a-long-password-1",
    "Basic not-base64!",
])
def test_ops_asks_for_the_operators_credentials(client, authorization):
    headers = {"Origin": "http://localhost"} | ({"Authorization": authorization} if authorization else {})
    for method, path in (("GET", "/ops"), ("GET", "/ops/deliveries/1"), ("POST", "/ops/deliveries/1/replay")):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == 'Basic realm="partnero-sync", charset="UTF-8"'


def test_the_operator_gets_the_pages(client):
    assert "Deliveries" in get(client, "/ops").text("deliveries-heading")
    missing = client.get("/ops/deliveries/424242", headers=AUTH)
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "There is no delivery #424242." in Page(missing.data).text("error")


# -- the list ----------------------------------------------------------------------------------


def test_the_list_shows_deliveries_newest_first_with_the_numbers_of_the_moment(client, settings, redis_conn):
    partner = post(client, sample_delivery("partner.created"))
    customer = post(client, sample_delivery("customer.created"))
    comma = post(client, unparseable_amount())
    friend = post(client, friend_customer())
    reward = post(client, sample_delivery("reward.created", id="rw_1"))  # no mapping: ignored at once
    work(settings, redis_conn)

    page = get(client, "/ops")
    assert page.row_ids == [reward, friend, comma, customer, partner]
    counts = {s: page.value(f"count-{s}") for s in ("pending", "processed", "ignored", "failed")}
    assert counts == {"pending": "0", "processed": "2", "ignored": "1", "failed": "2"}
    assert page.value("oldest-pending") == "none"
    # The jobs did their work: the failures are the deliveries', not the jobs'.
    assert (page.value("queue-depth"), page.value("failed-jobs")) == ("0", "0")
    assert "crm-backlog" not in page.html  # Salesforce is off
    assert "2 deliveries failed" in page.text("attention")

    failed = page.text(f"delivery-{comma}")
    assert failed.startswith(f"#{comma} transaction.created in_comma failed 1 transaction.yml: warehouse.columns.amount:")
    assert page.text(f"delivery-{friend}").startswith(
        f"#{friend} customer.created – failed 1 customer.yml: identity: data.key is empty in this delivery")
    assert page.text(f"delivery-{partner}").startswith(f"#{partner} partner.created ptn_8c1e6f0a processed 1")
    assert page.text(f"delivery-{reward}").startswith(f"#{reward} reward.created – ignored 0")
    assert f"/ops/deliveries/{comma}" in page.links


def test_the_list_filters_by_status_event_type_and_record(client, settings, redis_conn):
    partner = post(client, sample_delivery("partner.created"))
    customer = post(client, sample_delivery("customer.created"))
    comma = post(client, unparseable_amount())
    friend = post(client, friend_customer())
    reward = post(client, sample_delivery("reward.created", id="rw_1"))
    work(settings, redis_conn)
    everything = [reward, friend, comma, customer, partner]

    def ids(**query) -> list[int]:
        return get(client, "/ops", **query).row_ids

    assert ids(status="failed") == [friend, comma]
    assert ids(status="ignored") == [reward]
    assert ids(status="processed") == [customer, partner]
    assert ids(status="pending") == []
    assert ids(status="any") == ids(status="no-such-status") == everything
    assert ids(event_type="customer.created") == [friend, customer]
    assert ids(event_type=" reward.created ") == [reward]
    assert ids(entity_id="ptn_8c1e6f0a") == [partner]
    assert ids(entity_id="acct_000481") == [customer]
    assert ids(entity_id="acct_000") == []  # exact match only
    assert ids(status="failed", event_type="customer.created") == [friend]
    empty = get(client, "/ops", status="pending", event_type="partner.created")
    assert empty.text("no-deliveries") == "No deliveries match these filters."


def test_the_list_pages_back_by_id_keeping_the_filters(client):
    ids = [post(client, sample_delivery("reward.created", id=f"rw_{i}")) for i in range(55)]
    first = get(client, "/ops", event_type="reward.created")
    assert first.row_ids == ids[:4:-1]  # the newest 50
    [older] = [link for link in first.links if "before=" in link]
    assert older == f"/ops/?before={ids[5]}&event_type=reward.created"
    second = get(client, older)
    assert second.row_ids == ids[4::-1]
    assert not [link for link in second.links if "before=" in link]
    assert "/ops/?event_type=reward.created" in second.links  # back to the newest


# -- one delivery ------------------------------------------------------------------------------


def test_a_delivery_shows_its_payload_escaped_and_the_row_it_wrote(client, settings, redis_conn):
    hostile = sample_delivery("partner.created", name="<script>alert('x')</script>")
    event_id = post(client, hostile)
    work(settings, redis_conn)
    response = client.get(f"/ops/deliveries/{event_id}", headers=AUTH)
    html = response.data.decode()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    page = Page(html)
    assert page.text("status") == "processed"
    assert json.loads(page.text("payload")) == hostile
    assert page.text("warehouse").startswith("won The row holds this delivery's state.")
    assert "first_name <script>alert('x')</script>" in page.text("warehouse")
    assert f"sync_event_id {event_id}" in page.text("warehouse")
    assert not page.has("ledger")  # partners keep no ledger
    assert page.text("crm") == "Salesforce sync is off (no SALESFORCE_ variables set)."
    assert page.inputs["token"]


def test_the_payload_keeps_the_digits_it_was_sent_with(client, settings, redis_conn):
    body = json.dumps(sample_delivery("transaction.created")).replace('"amount": 149.0,', '"amount": 149.00,')
    event_id = post(client, body.encode())
    work(settings, redis_conn)
    page = get(client, f"/ops/deliveries/{event_id}")
    assert '"amount": 149.00,' in page.text("payload")
    assert "amount 149 " in page.text("warehouse")


def test_a_sale_shows_which_delivery_won_and_the_ledger_of_its_transaction(client, settings, redis_conn):
    sale = post(client, sample_delivery("transaction.created"))
    update = post(client, sample_delivery("transaction.updated", created_at="2026-03-15T08:00:00.000000Z",
                                          amount=159.0))
    refund = post(client, sample_delivery("transaction.deleted", created_at="2026-03-20T00:00:00.000000Z",
                                          key="in_1OxY3b2eZvKYlo2C0aQ1", rewards=[]))
    work(settings, redis_conn)

    first = get(client, f"/ops/deliveries/{sale}")
    assert first.text("warehouse").startswith(
        f"superseded The row holds the state of delivery #{update}, which is newer.")
    assert f"/ops/deliveries/{update}" in first.links
    assert "amount 159 " in first.text("warehouse")
    ledger = first.text("ledger")
    # Applied in one batch, the ledger follows the newest state: the update books the commission,
    # and the refund moves it out of pending, into reversed.
    assert f"1 commission ptn_8c1e6f0a#1 ptn_8c1e6f0a 44.7 USD pending review_period 2026-03-14 10:15:30 #{update}" in ledger
    assert f"reversal ptn_8c1e6f0a#1 ptn_8c1e6f0a -44.7 USD pending review_period 2026-03-20 00:00:00 #{refund}" in ledger
    assert f"reversal ptn_8c1e6f0a#1 ptn_8c1e6f0a 44.7 USD reversed review_period 2026-03-20 00:00:00 #{refund}" in ledger
    assert first.text("ledger-summary") == "0 of 3 entries were booked by this delivery (highlighted)."

    newest = get(client, f"/ops/deliveries/{update}")
    assert newest.text("warehouse").startswith("won The row holds this delivery's state.")
    assert newest.text("ledger-summary") == "1 of 3 entries were booked by this delivery (highlighted)."
    last = get(client, f"/ops/deliveries/{refund}")
    assert "Its tombstone (the delete) comes from this delivery." in last.text("warehouse")
    assert "refunded True" in last.text("warehouse")
    assert last.text("ledger-summary") == "2 of 3 entries were booked by this delivery (highlighted)."


def test_a_failed_delivery_shows_its_error_in_full_and_that_it_wrote_nothing(client, settings, redis_conn):
    comma = post(client, unparseable_amount())
    work(settings, redis_conn)
    page = get(client, f"/ops/deliveries/{comma}")
    assert page.text("last-error") == "transaction.yml: warehouse.columns.amount: a text is not a number"
    assert page.text("warehouse") == "No row for this record yet: nothing was written for it."
    assert page.text("ledger") == "No entries for this transaction."

    # A long reason (a database's refusal, say) is cut in the list, and shown whole on the page.
    long_reason = "database refused the write: " + "value too long for type character varying " * 5
    Inbox(db.engine_for(settings.database_url)).mark_failures({comma: long_reason})
    listed = get(client, "/ops").text(f"delivery-{comma}")
    assert long_reason not in listed and long_reason[:80] in listed and "..." in listed
    assert get(client, f"/ops/deliveries/{comma}").text("last-error") == long_reason.strip()


def test_a_delivery_shows_its_salesforce_outcome(settings, fake, redis_conn):  # noqa: F811
    settings = settings.with_overrides(salesforce=password_login(fake))
    client = create_app(settings).test_client()
    partner = post(client, sample_delivery("partner.created"))
    orphan = post(client, sample_delivery("customer.created", key="acct_orphan", partner="ptn_unknown"))
    work(settings, redis_conn)  # the deliveries, then the flush they ask for

    contact = fake.get("Contact", "Partnero_Partner_Id__c", "ptn_8c1e6f0a")
    synced = get(client, f"/ops/deliveries/{partner}").text("crm")
    assert synced.startswith(f"Status synced Attempts 0 Salesforce id {contact['Id']} Synced (UTC) 20")
    waiting = get(client, f"/ops/deliveries/{orphan}").text("crm")
    assert waiting.startswith("Status waiting Attempts 1 Salesforce id –")
    assert "Error INVALID_FIELD: Foreign key external ID: ptn_unknown not found" in waiting
    header = get(client, "/ops")
    assert (header.value("crm-backlog"), header.value("crm-refused")) == ("1", "0")


# -- replaying ---------------------------------------------------------------------------------


def test_replay_refuses_requests_without_a_good_token_or_from_another_site(client, settings, redis_conn,
                                                                         monkeypatch):
    partner = post(client, sample_delivery("partner.created"))
    friend = post(client, friend_customer())
    work(settings, redis_conn)
    token = get(client, f"/ops/deliveries/{friend}").inputs["token"]
    other = get(client, f"/ops/deliveries/{partner}").inputs["token"]
    real_time = time.time
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real_time() - TOKEN_MAX_AGE - 60)
        stale = get(client, f"/ops/deliveries/{friend}").inputs["token"]
    before = inbox_row(settings, friend)

    refusals = [
        (None, SAME_ORIGIN, "token"),
        ("", SAME_ORIGIN, "token"),
        ("not-a-token", SAME_ORIGIN, "token"),
        (other, SAME_ORIGIN, "token"),  # made for another delivery
        (stale, SAME_ORIGIN, "token"),  # expired
        (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), SAME_ORIGIN, "token"),
        (token, {**AUTH, "Origin": "https://evil.example"}, "site"),
        (token, {**AUTH, "Referer": "https://evil.example/ops/deliveries/1"}, "site"),
        (token, {**AUTH, "Origin": "http://localhost:8080"}, "site"),
        (token, AUTH, "site"),  # neither Origin nor Referer
    ]
    for form_token, headers, what in refusals:
        response = replay(client, friend, form_token, headers)
        assert response.status_code == 403, (form_token, headers)
        assert response.mimetype == "text/html"
        message = Page(response.data).text("error")
        assert message.startswith("Refused:")
        assert ("token" in message) == (what == "token"), message
    assert inbox_row(settings, friend) == before
    assert Queue(QUEUE_NAME, connection=redis_conn).count == 0

    with_referer = replay(client, friend, token, {**AUTH, "Referer": f"http://localhost/ops/deliveries/{friend}"})
    assert with_referer.status_code == 303  # a browser that sends only Referer is one of ours too


def test_replay_hands_the_delivery_to_the_workers_who_apply_it_with_their_mappings(settings, redis_conn, caplog):
    """During a deploy the web may still run the old mapping files: a replay is applied by a
    worker, with the worker's."""
    web = create_app(settings).test_client()  # the web, still on the old mapping
    friend = post(web, friend_customer())
    work(settings, redis_conn)
    assert inbox_row(settings, friend)["status"] == "failed"
    fix_customer_identity(settings)  # the workers now run the fixed one

    page = get(web, f"/ops/deliveries/{friend}")
    assert page.text("status") == "failed"
    # The web's old mapping cannot even say which record it is about.
    assert page.text("warehouse") == "The record's key could not be read from this delivery, so it wrote nothing."
    assert not page.has("replay-state")

    with caplog.at_level(logging.DEBUG):
        response = replay(web, friend, page.inputs["token"])
    assert response.status_code == 303
    assert response.headers["Location"] == f"/ops/deliveries/{friend}"
    queued = Page(web.get(response.headers["Location"], headers=AUTH).data)
    assert queued.text("flashes") == ("Replay queued: a worker applies it again with its mapping files; "
                                      "this page shows the outcome.")
    assert queued.text("status") == "pending"
    assert queued.text("replay-state").startswith("queued A replay was asked at ")
    assert '<meta http-equiv="refresh"' in queued.html  # it reloads until a worker has applied it
    assert Queue(QUEUE_NAME, connection=redis_conn).count == 1  # a worker is woken
    row = inbox_row(settings, friend)
    assert (row["status"], row["attempts"], row["claimed_until"]) == ("pending", 0, None)
    assert row["replay_asked_at"] is not None

    work(settings, redis_conn)  # a worker, on the fixed mapping
    after = get(web, f"/ops/deliveries/{friend}")
    assert not after.has("flashes")  # said once
    assert after.text("status") == "processed"
    assert after.text("replay-state").endswith("a worker has applied it since: processed.")
    assert '<meta http-equiv="refresh"' not in after.html
    assert after.text("warehouse").startswith("won The row holds this delivery's state.")
    assert "customer_key rf_2217" in after.text("warehouse")
    row = inbox_row(settings, friend)
    assert (row["status"], row["last_error"]) == ("processed", None)

    replayed = [r for r in caplog.records if r.name == "app.ops"]
    assert [(r.getMessage(), r.inbox_id, r.event_type) for r in replayed] == [
        ("replay from /ops: requeued", friend, "customer.created")]
    for value in ("daniel.kim@northwind.dev", "Daniel", "Kim"):  # no payload values in the logs
        assert value not in caplog.text


def test_replaying_a_delivery_that_still_does_not_fit_shows_why_once_a_worker_tried(client, settings, redis_conn):
    comma = post(client, unparseable_amount())
    work(settings, redis_conn)
    token = get(client, f"/ops/deliveries/{comma}").inputs["token"]
    assert replay(client, comma, token).status_code == 303
    assert get(client, f"/ops/deliveries/{comma}").text("status") == "pending"
    work(settings, redis_conn)
    page = get(client, f"/ops/deliveries/{comma}")
    reason = inbox_row(settings, comma)["last_error"]
    assert page.text("status") == "failed"
    assert page.text("replay-state").endswith("a worker has applied it since: failed (see the last error).")
    assert page.text("last-error") == reason == "transaction.yml: warehouse.columns.amount: a text is not a number"


def test_replaying_an_older_processed_sale_changes_nothing_and_books_nothing_twice(client, settings, redis_conn):
    sale = post(client, sample_delivery("transaction.created"))
    update = post(client, sample_delivery("transaction.updated", created_at="2026-03-15T08:00:00.000000Z",
                                          amount=159.0))
    work(settings, redis_conn)
    before = get(client, f"/ops/deliveries/{sale}")
    assert "amount 159 " in before.text("warehouse")
    # Asked twice before a worker comes: queued, then already waiting.
    for said in ("Replay queued: a worker applies it again with its mapping files; this page shows the outcome.",
                 "Already waiting for a worker, which applies it with its mapping files."):
        assert replay(client, sale, before.inputs["token"]).status_code == 303
        assert get(client, f"/ops/deliveries/{sale}").text("flashes") == said
    work(settings, redis_conn)
    after = get(client, f"/ops/deliveries/{sale}")
    assert after.text("status") == "processed"
    assert after.text("warehouse").startswith(  # the newest state still wins
        f"superseded The row holds the state of delivery #{update}, which is newer.")
    assert "amount 159 " in after.text("warehouse")
    assert after.text("ledger") == before.text("ledger")  # no commission booked twice


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replay_answers_at_once_while_the_record_is_locked(client, settings, redis_conn):
    """Another session holds the delivery's warehouse row (a long transaction, a stuck worker):
    the Replay request does not wait for it, and a worker applies the delivery once it is free."""
    partner = post(client, sample_delivery("partner.created"))
    work(settings, redis_conn)
    token = get(client, f"/ops/deliveries/{partner}").inputs["token"]
    engine = db.engine_for(settings.database_url)
    holder = engine.connect()
    holder.execute(sa.text("SELECT * FROM partners WHERE partner_id = 'ptn_8c1e6f0a' FOR UPDATE")).all()
    # Should the request wait for the lock after all, let go of it in a while, so the test ends.
    release = threading.Timer(15, holder.rollback)
    release.start()
    try:
        started = time.monotonic()
        response = replay(client, partner, token)
        took = time.monotonic() - started
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert response.status_code == 303
    assert took < 3, f"the Replay request took {took:.1f}s"
    assert inbox_row(settings, partner)["status"] == "pending"
    work(settings, redis_conn)
    assert inbox_row(settings, partner)["status"] == "processed"


def test_a_pruned_delivery_cannot_be_replayed(client, settings, redis_conn):
    partner = post(client, sample_delivery("partner.created"))
    work(settings, redis_conn)
    token = get(client, f"/ops/deliveries/{partner}").inputs["token"]
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(webhook_events.update().where(webhook_events.c.id == partner).values(body=PRUNED_BODY))
    before = inbox_row(settings, partner)

    page = get(client, f"/ops/deliveries/{partner}")
    assert page.text("replay").startswith("Its body was pruned")
    assert "token" not in page.inputs
    assert page.text("payload") == "The body was pruned."
    assert "won The row holds this delivery's state." in page.text("warehouse")  # still traced

    assert replay(client, partner, token).status_code == 303
    after = get(client, f"/ops/deliveries/{partner}")
    assert after.text("flashes") == "Not replayed: its body was pruned, so there is nothing left to apply."
    assert inbox_row(settings, partner) == before
    assert Queue(QUEUE_NAME, connection=redis_conn).count == 0


def test_a_replay_leads_to_a_salesforce_flush_and_the_page_shows_the_outcome(settings, fake, redis_conn):  # noqa: F811
    settings = settings.with_overrides(salesforce=password_login(fake))
    web = create_app(settings).test_client()
    post(web, sample_delivery("partner.created"))
    friend = post(web, friend_customer())
    work(settings, redis_conn)
    assert fake.records("Account") == []

    fix_customer_identity(settings)
    page = get(web, f"/ops/deliveries/{friend}")
    assert page.text("crm") == "Nothing in the outbox for this record: this delivery was not applied."
    assert replay(web, friend, page.inputs["token"]).status_code == 303
    assert Queue(CRM_QUEUE_NAME, connection=redis_conn).count == 0  # the worker asks, once it applied it

    work(settings, redis_conn)
    account = fake.get("Account", "Partnero_Customer_Key__c", "rf_2217")
    assert get(web, f"/ops/deliveries/{friend}").text("crm").startswith(
        f"Status synced Attempts 0 Salesforce id {account['Id']}")


def test_a_replay_with_redis_away_is_queued_for_the_sweeper(settings, redis_conn):
    from sync.services import Services

    web = create_app(settings).test_client()
    friend = post(web, friend_customer())
    work(settings, redis_conn)
    fix_customer_identity(settings)
    away = create_app(settings.with_overrides(redis_url=DEAD_REDIS_URL)).test_client()
    token = get(away, f"/ops/deliveries/{friend}").inputs["token"]
    assert replay(away, friend, token).status_code == 303
    flashed = get(away, f"/ops/deliveries/{friend}").text("flashes")
    assert flashed.startswith("Replay queued: ") and "Redis could not take the wake-up (" in flashed
    assert inbox_row(settings, friend)["status"] == "pending"

    # Redis back: the worker's sweeper finds the row and wakes a worker, which applies it.
    Services.build(settings.with_overrides(sweep_after_seconds=0), redis_conn).housekeeping()
    work(settings, redis_conn)
    assert inbox_row(settings, friend)["status"] == "processed"


def test_the_pages_say_when_the_database_is_away(settings, redis_conn):
    client = create_app(settings.with_overrides(database_url=DEAD_PG_URL)).test_client()
    for path in ("/ops", "/ops/deliveries/1"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 503 and response.mimetype == "text/html"
        assert Page(response.data).text("error").startswith("database unavailable:")


def test_the_replay_command_leaves_pruned_deliveries_alone(client, settings, redis_conn):
    from sync.pipeline.replay import replay as replay_all
    from sync.services import Services

    partner = post(client, sample_delivery("partner.created"))
    customer = post(client, sample_delivery("customer.created"))
    work(settings, redis_conn)
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(webhook_events.update().where(webhook_events.c.id == partner).values(body=PRUNED_BODY))
    result = replay_all(Services.build(settings, redis_conn), show_progress=False)
    assert (result.total, result.processed, result.pruned, result.failed) == (2, 1, 1, [])
    assert inbox_row(settings, partner)["status"] == "processed"
    assert inbox_row(settings, customer)["status"] == "processed"


def test_a_delivery_with_a_lone_surrogate_shows_it_as_its_escape(client, settings, redis_conn):
    """JSON may carry a text no encoding can write ("\\ud800" alone): the page shows the escape."""
    body = json.dumps(sample_delivery("partner.created", name="Ann\ud800")).encode()
    assert b'"Ann\\ud800"' in body
    event_id = post(client, body)
    work(settings, redis_conn)
    response = client.get(f"/ops/deliveries/{event_id}", headers=AUTH)
    assert response.status_code == 200, response.data[:300]
    page = Page(response.data)
    assert '"name": "Ann\\ud800"' in page.text("payload")
    assert page.inputs["token"]  # its Replay button is there
