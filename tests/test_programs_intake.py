"""Several Partnero programs at the receiver and in the worker: each program's URL verifies with its
own secrets only, deduplicates on its own, and its deliveries become its own rows."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.serving import make_server

from app import create_app
from sync.cli import main
from sync.ops import metrics
from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.settings import Settings
from sync.store import db, ledger
from sync.store.inbox import Delivery, DeliveryStatus, Inbox, webhook_events
from sync.worker import jobs
from tests.conftest import MAPPINGS, signed

AFFILIATE = ("whsec_aff_new", "whsec_aff_old")  # being rotated
FRIENDS = ("whsec_friends",)


def programs_settings(database_url: str, redis_url: str, names: str = "affiliate,friends", **more: str) -> Settings:
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(MAPPINGS),
        "PARTNERO_PROGRAMS": names,
        "PARTNERO_AFFILIATE_WEBHOOK_SECRET": ",".join(AFFILIATE),
        "PARTNERO_FRIENDS_WEBHOOK_SECRET": ",".join(FRIENDS),
        **more,
    }
    return Settings.from_env(env)


@pytest.fixture
def two(database_url, redis_server_url, redis_conn):
    settings = programs_settings(database_url, redis_server_url)
    return create_app(settings).test_client(), settings


def inbox_rows(url: str) -> list[dict]:
    with db.engine_for(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(webhook_events).order_by(webhook_events.c.id))]


def test_each_program_takes_deliveries_signed_with_its_own_secrets_only(two):
    client, settings = two
    body, headers = signed(sample_delivery("partner.created"), secret=AFFILIATE[1])  # the old one, still valid
    assert client.post("/webhooks/partnero/affiliate", data=body, headers=headers).status_code == 202

    # Another program's secret is a 401 there, and nothing is stored for it.
    refused = client.post("/webhooks/partnero/friends", data=body, headers=headers)
    assert refused.status_code == 401 and refused.get_json() == {"error": "signature does not match"}
    [row] = inbox_rows(settings.database_url)
    assert row["program"] == "affiliate"


def test_the_same_bytes_sent_to_two_programs_are_two_deliveries_and_a_retry_is_one(two):
    client, settings = two
    body = signed(sample_delivery("partner.created"))[0]
    answers = []
    for name, secret in (("affiliate", AFFILIATE[0]), ("friends", FRIENDS[0]), ("affiliate", AFFILIATE[0])):
        answers.append(client.post(f"/webhooks/partnero/{name}", data=body,
                                   headers=signed(body, secret=secret)[1]).get_json()["status"])
    assert answers == ["queued", "queued", "duplicate"]
    rows = inbox_rows(settings.database_url)
    assert [r["program"] for r in rows] == ["affiliate", "friends"]
    # Program default would have kept sha256(body); the others' fingerprints are their own.
    assert len({r["fingerprint"] for r in rows} | {hashlib.sha256(body).hexdigest()}) == 3


def test_an_unknown_program_is_the_same_404_as_any_unknown_path(two):
    client, settings = two
    body, headers = signed(sample_delivery("partner.created"), secret=AFFILIATE[0])
    nowhere = client.post("/webhooks/nowhere", data=body, headers=headers)
    for path in ("/webhooks/partnero/brand-x", "/webhooks/partnero/Affiliate", "/webhooks/partnero"):
        answer = client.post(path, data=body, headers=headers)  # no default program in this deployment
        assert (answer.status_code, answer.get_data(), answer.headers.get("Content-Type")) == (
            nowhere.status_code, nowhere.get_data(), nowhere.headers.get("Content-Type")) == (
            404, b'{"error":"not found"}\n', "application/json")
    assert inbox_rows(settings.database_url) == []


def test_without_programs_both_urls_are_program_default(client, settings):
    body, headers = signed(sample_delivery("partner.created"))
    assert client.post("/webhooks/partnero", data=body, headers=headers).get_json()["status"] == "queued"
    assert client.post("/webhooks/partnero/default", data=body, headers=headers).get_json()["status"] == "duplicate"
    [row] = inbox_rows(settings.database_url)
    assert (row["program"], row["fingerprint"]) == ("default", hashlib.sha256(body).hexdigest())
    assert client.post("/webhooks/partnero/affiliate", data=body, headers=headers).status_code == 404


def test_the_receivers_counts_name_the_program(two, redis_conn):
    client, _ = two
    body, headers = signed(sample_delivery("partner.created"), secret=FRIENDS[0])
    client.post("/webhooks/partnero/friends", data=body, headers=headers)
    client.post("/webhooks/partnero/affiliate", data=body, headers=headers)  # the wrong secret there
    stored = metrics.read(redis_conn)[metrics.RECEIVED.key]
    assert stored == {"program=friends,outcome=queued,reason=": "1",
                      "program=affiliate,outcome=refused,reason=bad_signature": "1"}


def test_colliding_ids_in_two_programs_are_two_records_and_two_ledgers(two, whole_drains, redis_conn):
    client, settings = two
    sale = sample_delivery("transaction.created", key="tr_1", amount=100, amount_units="usd",
                           rewards=[{"partner": "ptn_1", "amount": 10, "amount_units": "usd", "status": "ok"}])
    partner = sample_delivery("partner.created", id="ptn_1")
    for name, secret in (("affiliate", AFFILIATE[0]), ("friends", FRIENDS[0])):
        for document in (partner, sale):
            body, headers = signed(document, secret=secret)
            assert client.post(f"/webhooks/partnero/{name}", data=body, headers=headers).status_code == 202
    # The friends' sale is refunded; the affiliate's stands.
    body, headers = signed(sample_delivery("transaction.deleted", key="tr_1"), secret=FRIENDS[0])
    client.post("/webhooks/partnero/friends", data=body, headers=headers)

    services = Services.build(settings, redis_conn)
    jobs.drain(services)

    engine = db.engine_for(settings.database_url)
    with engine.connect() as conn:
        partners = conn.execute(sa.text("SELECT program, partner_id FROM partners ORDER BY program")).all()
        sales = conn.execute(sa.text("SELECT program, transaction_key, refunded FROM transactions ORDER BY program")).all()
        owed = {(t.program, t.partner_id): t.owed for t in ledger.totals(conn, ["ptn_1"], program=None)}
    assert partners == [("affiliate", "ptn_1"), ("friends", "ptn_1")]
    assert [(p, k, bool(r)) for p, k, r in sales] == [("affiliate", "tr_1", False), ("friends", "tr_1", True)]
    assert owed == {("affiliate", "ptn_1"): 10, ("friends", "ptn_1"): 0}
    assert {r["status"] for r in inbox_rows(settings.database_url)} == {"processed"}


def test_a_program_no_longer_served_keeps_its_deliveries_pending_until_it_is_again(
        two, whole_drains, redis_conn, database_url, redis_server_url):
    client, settings = two
    body, headers = signed(sample_delivery("partner.created"), secret=FRIENDS[0])
    client.post("/webhooks/partnero/friends", data=body, headers=headers)
    fewer = Services.build(programs_settings(database_url, redis_server_url, names="affiliate",
                                             PARTNERO_FRIENDS_WEBHOOK_SECRET=""), redis_conn)
    jobs.drain(fewer)
    [row] = inbox_rows(settings.database_url)
    assert (row["status"], row["attempts"]) == ("pending", 0)  # nothing acknowledged is lost
    assert fewer.inbox.claimable() == 0  # and the sweeper does not wake workers for it in vain

    jobs.drain(Services.build(settings, redis_conn))
    [row] = inbox_rows(settings.database_url)
    assert row["status"] == "processed"


def test_a_flood_of_one_programs_deliveries_delays_the_others_by_a_share_of_a_claim_at_most(database_url):
    engine = db.engine_for(database_url)
    flood = [Delivery(json.dumps({"event": "partner.created", "n": n}).encode(), "partner.created",
                      DeliveryStatus.PENDING, program="affiliate") for n in range(30)]
    inbox = Inbox(engine, programs=["affiliate", "friends"])
    inbox.store_many(flood)
    inbox.store_many([Delivery(b'{"event": "partner.created"}', "partner.created", DeliveryStatus.PENDING,
                               program="friends")])
    claimed = inbox.claim(10)
    assert [d.program for d in claimed].count("friends") == 1 and len(claimed) == 10
    # Oldest first within each program; a program with nothing pending leaves its share to the others.
    assert [d.id for d in claimed if d.program == "affiliate"] == sorted(d.id for d in claimed if d.program == "affiliate")
    assert {d.program for d in inbox.claim(10)} == {"affiliate"}


def test_send_test_signs_with_the_programs_secret_and_posts_to_its_url(redis_conn, redis_server_url, database_url):
    settings = programs_settings(database_url, redis_server_url)
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"PARTNERO_PROGRAMS": "affiliate,friends", "PARTNERO_AFFILIATE_WEBHOOK_SECRET": AFFILIATE[0],
           "PARTNERO_FRIENDS_WEBHOOK_SECRET": FRIENDS[0], "DATABASE_URL": database_url}
    try:
        base = f"http://127.0.0.1:{server.server_port}/webhooks/partnero"
        sent = CliRunner().invoke(main, ["send-test", "--program", "friends", "--url", f"{base}/friends"], env=env)
        assert sent.exit_code == 0 and sent.output.startswith('202 {"id":1,"status":"queued"}'), sent.output
        # Another program's URL with this program's secret: the receiver's refusal, shown.
        wrong = CliRunner().invoke(main, ["send-test", "--program", "friends", "--url", f"{base}/affiliate"], env=env)
        assert wrong.exit_code == 1 and "401" in wrong.output
    finally:
        server.shutdown()
    assert [row["program"] for row in inbox_rows(database_url)] == ["friends"]
