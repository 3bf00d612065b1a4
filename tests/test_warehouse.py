"""Deliveries into the warehouse and the ledger, on SQLite and PostgreSQL (and MariaDB)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sync.partnero.samples import CUSTOMER, PARTNER, TRANSACTION
from sync.store.ledger import commission_entries
from tests.warehouse_helpers import Pipe, envelope


@pytest.fixture
def pipe(warehouse_url) -> Pipe:
    return Pipe(warehouse_url)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def partner(event: str, updated_at: str, sent_at: str | None = None, **changes):
    data = {**PARTNER, "updated_at": updated_at, **changes}
    return envelope(event, sent_at or updated_at, **data)


def transaction(event: str, sent_at: str, **changes):
    return envelope(event, sent_at, **{**TRANSACTION, **changes})


def test_a_partner_becomes_a_row_with_the_mapped_columns(pipe):
    assert pipe.deliver(partner("partner.created", "2026-03-14T09:21:06.000000Z", email=" Maria@TechReviews.IO ")) == [
        "processed"
    ]
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["partner_key"] == "maria-tech"
    assert row["email"] == "maria@techreviews.io"
    assert (row["first_name"], row["last_name"]) == ("Maria", "Lopez")
    assert row["status"] == "active" and row["approved"] is True
    assert row["tags"] == "youtube"
    assert row["created_at"] == utc("2026-01-05T16:44:13Z")
    assert row["updated_at"] == utc("2026-03-14T09:21:06Z")
    assert row["deleted_at"] is None


def test_an_older_update_never_overwrites_a_newer_one(pipe):
    newer = partner("partner.updated", "2026-03-15T00:00:00.000000Z", name="Mariana")
    older = partner("partner.updated", "2026-03-14T00:00:00.000000Z", name="Maria")
    pipe.deliver(newer, older)
    assert pipe.row("partners", "ptn_8c1e6f0a")["first_name"] == "Mariana"


def test_the_same_delivery_twice_changes_nothing(pipe):
    delivery = partner("partner.created", "2026-03-14T09:21:06.000000Z")
    pipe.deliver(delivery)
    first = pipe.rows("partners")
    event = pipe.store(delivery)  # the same bytes: the same inbox row
    pipe.processor.process(event)
    assert pipe.rows("partners") == first


def test_a_delete_leaves_a_tombstone_that_a_late_older_update_cannot_lift(pipe):
    pipe.deliver(
        partner("partner.created", "2026-03-14T00:00:00.000000Z"),
        envelope("partner.deleted", "2026-03-16T00:00:00.000000Z", id="ptn_8c1e6f0a"),
        partner("partner.updated", "2026-03-15T00:00:00.000000Z", name="Late"),
    )
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["deleted_at"] == utc("2026-03-16T00:00:00Z")
    assert row["status"] == "deleted"
    assert row["first_name"] == "Late"  # the newest state's fields; still deleted


def test_a_partial_delete_payload_does_not_blank_the_record(pipe):
    pipe.deliver(
        partner("partner.created", "2026-03-14T00:00:00.000000Z"),
        envelope("partner.deleted", "2026-03-16T00:00:00.000000Z", id="ptn_8c1e6f0a"),
    )
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["email"] == "maria@techreviews.io" and row["deleted_at"] is not None


def test_a_delete_before_its_create_still_ends_deleted(pipe):
    pipe.deliver(
        envelope("customer.deleted", "2026-03-16T00:00:00.000000Z", key="acct_000481", deleted=True),
        envelope("customer.created", "2026-03-14T10:02:54.000000Z", **CUSTOMER),
    )
    row = pipe.row("customers", "acct_000481")
    assert row["status"] == "deleted" and row["deleted_at"] == utc("2026-03-16T00:00:00Z")
    assert row["email"] == "daniel.kim@northwind.dev" and row["partner_id"] == "ptn_8c1e6f0a"


def test_a_transaction_books_one_exact_commission_per_reward(pipe):
    rewards = [
        {**TRANSACTION["rewards"][0], "amount": 29.997},
        {**TRANSACTION["rewards"][0], "partner": "ptn_second", "amount": 0.000001, "status": "ok"},
    ]
    body = (
        '{"event":"transaction.created","created_at":"2026-03-14T10:15:31.000000Z","data":'
        '{"key":"in_1","amount":123456789012.123456,"amount_units":"usd","partner":"ptn_8c1e6f0a",'
        '"customer":"acct_000481","action":"sale","created_at":"2026-03-14T10:15:30.000000Z","rewards":'
        + __import__("json").dumps(rewards)
        + "}}"
    ).encode()
    pipe.deliver(body, body)
    row = pipe.row("transactions", "in_1")
    assert row["amount"] == Decimal("123456789012.123456")  # 18 digits, not a float
    assert row["currency"] == "USD" and row["refunded"] is False
    assert pipe.ledger() == [
        ("commission", "in_1", "ptn_8c1e6f0a#1", "ptn_8c1e6f0a", Decimal("29.997"), "USD", "review_period",
         utc("2026-03-14T10:15:30Z")),
        ("commission", "in_1", "ptn_second#1", "ptn_second", Decimal("0.000001"), "USD", "ok",
         utc("2026-03-14T10:15:30Z")),
    ]
    assert pipe.owed() == {"ptn_8c1e6f0a": Decimal("29.997"), "ptn_second": Decimal("0.000001")}


def test_a_refund_reverses_what_was_booked_once(pipe):
    created = transaction("transaction.created", "2026-03-14T10:15:31.000000Z")
    # Partnero may send the refund with an empty rewards list, or little more than the key.
    refunds = [
        transaction("transaction.deleted", "2026-03-20T00:00:00.000000Z", rewards=[],
                    deleted_at="2026-03-20T00:00:00.000000Z"),
        envelope("transaction.deleted", "2026-03-20T00:05:00.000000Z", key=TRANSACTION["key"]),
    ]
    pipe.deliver(created, *refunds, *refunds)
    key = TRANSACTION["key"]
    row = pipe.row("transactions", key)
    assert row["refunded"] is True and row["deleted_at"] is not None
    assert row["amount"] == Decimal("149")  # the sale is still on record
    # Booked once; reversed once: out of pending, into reversed.
    assert [(e["entry_type"], e["reward_ref"], e["amount"], e["standing"], e["reward_status"]) for e in pipe.entries()] == [
        ("commission", "ptn_8c1e6f0a#1", Decimal("44.7"), "pending", "review_period"),
        ("reversal", "ptn_8c1e6f0a#1", Decimal("-44.7"), "pending", "review_period"),
        ("reversal", "ptn_8c1e6f0a#1", Decimal("44.7"), "reversed", "review_period"),
    ]
    assert pipe.owed() == {"ptn_8c1e6f0a": Decimal(0)}
    assert pipe.totals()[("ptn_8c1e6f0a", "USD", True)]["reversed"] == Decimal("44.7")


def test_a_refund_before_its_sale_nets_to_zero_when_the_sale_arrives(pipe):
    pipe.deliver(envelope("transaction.deleted", "2026-03-20T00:00:00.000000Z", key=TRANSACTION["key"]))
    assert pipe.row("transactions", TRANSACTION["key"])["refunded"] is True
    assert pipe.ledger() == []
    pipe.deliver(transaction("transaction.created", "2026-03-14T10:15:31.000000Z"))
    row = pipe.row("transactions", TRANSACTION["key"])
    assert row["refunded"] is True and row["amount"] == Decimal("149")
    # Booked and reversed at once, so the ledger shows what the refund took back.
    assert [(e["entry_type"], e["standing"]) for e in pipe.entries()] == [
        ("commission", "pending"), ("reversal", "pending"), ("reversal", "reversed")]
    assert pipe.owed() == {"ptn_8c1e6f0a": Decimal(0)}


def test_rejected_rewards_are_not_owed(pipe):
    rewards = [{**TRANSACTION["rewards"][0], "status": "rejected"}]
    pipe.deliver(transaction("transaction.created", "2026-03-14T10:15:31.000000Z", rewards=rewards))
    assert pipe.ledger(with_times=False)[0][6] == "rejected"
    assert pipe.owed() == {"ptn_8c1e6f0a": Decimal(0)}
    assert pipe.totals()[("ptn_8c1e6f0a", "USD", True)]["rejected"] == Decimal("44.7")


def test_originals_are_never_edited(pipe):
    pipe.deliver(transaction("transaction.created", "2026-03-14T10:15:31.000000Z"))
    with pipe.engine.connect() as conn:
        before = conn.execute(sa.select(commission_entries)).one()
    pipe.deliver(envelope("transaction.deleted", "2026-03-20T00:00:00.000000Z", key=TRANSACTION["key"]))
    with pipe.engine.connect() as conn:
        after = conn.execute(
            sa.select(commission_entries).where(commission_entries.c.entry_type == "commission")
        ).one()
    assert after == before


def test_the_ledger_refuses_a_second_booking_by_constraint(pipe):
    pipe.deliver(transaction("transaction.created", "2026-03-14T10:15:31.000000Z"))
    with pipe.engine.connect() as conn:
        entry = dict(conn.execute(sa.select(commission_entries)).one()._mapping)
    entry.pop("id")
    with pytest.raises(sa.exc.IntegrityError):
        with pipe.engine.begin() as conn:
            conn.execute(commission_entries.insert().values(entry))


def test_unusual_names_and_values_are_kept_as_sent(pipe):
    name = "Zoë 李 O'Brien-Ñúñez \U0001f600"
    pipe.deliver(partner("partner.created", "2026-03-14T00:00:00.000000Z", name=name, surname=None,
                         email=None, tags=[], approved="yes"))
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["first_name"] == name and row["last_name"] is None and row["email"] is None
    assert row["approved"] is True and row["tags"] == ""


def test_a_value_that_does_not_fit_fails_the_delivery_with_the_field_named_not_the_value(pipe):
    from sync.core.errors import PermanentError

    bad = transaction("transaction.created", "2026-03-14T10:15:31.000000Z", amount="12,50")
    with pytest.raises(PermanentError, match=r"transaction.yml: warehouse.columns.amount: a text is not a number") as raised:
        pipe.deliver(bad)
    assert "12,50" not in str(raised.value)
    too_precise = transaction("transaction.created", "2026-03-14T10:15:31.000000Z", amount=1.0000001)
    with pytest.raises(PermanentError, match="more than 6 decimal places"):
        pipe.deliver(too_precise)
    assert pipe.rows("transactions") == []  # nothing half-written


def test_an_event_no_mapping_handles_is_ignored(pipe):
    assert pipe.deliver(envelope("reward.created", "2026-03-14T00:00:00.000000Z", key="rw_1")) == ["ignored"]


def test_a_delivery_the_database_refuses_fails_alone(pg_url):
    """A value longer than its column (a reward's status, 64 characters in the ledger) refuses the
    whole fast batch; the rest still lands. (A record id that long is refused before any write.)"""
    from sync.store.inbox import Delivery, DeliveryStatus
    from tests.conftest import empty_tables

    empty_tables(pg_url)
    pipe = Pipe(pg_url)
    rewards = [{**TRANSACTION["rewards"][0], "status": "U" * 100}]
    documents = [partner("partner.created", "2026-03-14T00:00:00.000000Z"),
                 transaction("transaction.created", "2026-03-14T10:15:31.000000Z", rewards=rewards)]
    bodies = [__import__("json").dumps(d).encode() for d in documents]
    stored = pipe.inbox.store_many([Delivery(b, d["event"], DeliveryStatus.PENDING) for b, d in zip(bodies, documents)])
    events = pipe.inbox.claim(len(stored), ids=[s.id for s in stored.values()])
    result = pipe.processor.process_batch(events)
    assert len(result.processed) == 1 and len(result.failed) == 1
    [reason] = result.failed.values()
    assert reason.startswith("database refused the write: value too long")
    assert pipe.row("partners", "ptn_8c1e6f0a") is not None
    assert pipe.inbox.summary().counts == {"pending": 0, "processed": 1, "ignored": 0, "failed": 1}


def test_an_unreadable_version_time_falls_back_to_the_delivery_time(pipe):
    assert pipe.deliver(partner("partner.updated", "not a time", sent_at="2026-03-14T10:00:00Z", name="Ana")) == [
        "processed"]
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["first_name"] == "Ana" and row["sync_version"] == utc("2026-03-14T10:00:00Z")
    assert row["updated_at"] is None  # a datetime column keeps no unreadable time
    # It orders like any other delivery of that time: a later genuine update wins.
    pipe.deliver(partner("partner.updated", "2026-03-15T00:00:00Z", name="Bea"))
    assert pipe.row("partners", "ptn_8c1e6f0a")["first_name"] == "Bea"


@pytest.mark.parametrize("absurd", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00", "2026-03-20T00:00:00Z"],
                         ids=["year-9999", "year-1-with-offset", "days-ahead-of-the-delivery"])
def test_an_absurd_version_time_never_pins_a_record(pipe, absurd):
    pipe.deliver(partner("partner.updated", absurd, sent_at="2026-03-14T10:00:00Z", name="Pinned?"))
    pipe.deliver(partner("partner.updated", "2026-03-15T00:00:00Z", name="Later"))
    row = pipe.row("partners", "ptn_8c1e6f0a")
    assert row["first_name"] == "Later" and row["sync_version"] == utc("2026-03-15T00:00:00Z")
