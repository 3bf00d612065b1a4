"""Property: any shuffle of a delivery history, with duplicates, delivered in random batches through
the batch path the worker uses, ends in the in-order state.

Histories are generated: partners and customers updated over time and perhaps deleted,
transactions created (with one or more rewards), perhaps refunded with a full, empty-rewards or
key-only payload, and Partnero's retries (the same bytes, or the same data sent again later).
Run on SQLite and PostgreSQL, ledger included.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.warehouse_helpers import Pipe, envelope

BASE = datetime(2026, 3, 1, tzinfo=timezone.utc)
PARTNERS = ["ptn_a", "ptn_b", "ptn_c"]


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999"), places=3, allow_nan=False)


@st.composite
def partner_history(draw, partner_id: str) -> list[dict]:
    deliveries = []
    for step in range(draw(st.integers(1, 3))):
        updated = stamp(step * 10)
        deliveries.append(envelope(
            "partner.created" if step == 0 else draw(st.sampled_from(["partner.updated", "partner.approved"])),
            stamp(step * 10 + 1),
            id=partner_id, key=f"key-{partner_id}-{step}", email=f"{partner_id}@Example.com",
            name=draw(st.sampled_from(["Maria", "Zoë", "李", ""])), surname=draw(st.sampled_from([None, "Lopez"])),
            status=draw(st.sampled_from(["active", "pending"])), approved=draw(st.booleans()),
            created_at=stamp(0), updated_at=updated,
        ))
    if draw(st.booleans()):
        deliveries.append(envelope("partner.deleted", stamp(100), id=partner_id, deleted_at=stamp(100)))
    return deliveries


@st.composite
def transaction_history(draw, key: str) -> list[dict]:
    partners = draw(st.lists(st.sampled_from(PARTNERS), min_size=1, max_size=3))
    created_at = stamp(draw(st.integers(0, 50)))
    rewards = [
        {"key": key, "partner": p, "amount": float(draw(amounts)), "amount_units": "USD",
         "status": draw(st.sampled_from(["ok", "review_period", "rejected"])), "created_at": created_at}
        for p in partners
    ]
    data = {"key": key, "action": "sale", "amount": float(draw(amounts)), "amount_units": "USD",
            "partner": partners[0], "customer": f"cust_{key}", "created_at": created_at, "deleted_at": None,
            "rewards": rewards}
    deliveries = [envelope("transaction.created", created_at, **data)]
    if draw(st.booleans()):  # Partnero retries the same data later
        deliveries.append(envelope("transaction.created", stamp(60), **data))
    if draw(st.booleans()):
        refunded_at = stamp(200)
        payload = draw(st.sampled_from(["full", "empty rewards", "key only"]))
        if payload == "full":
            refund = {**data, "deleted_at": refunded_at}
        elif payload == "empty rewards":
            refund = {**data, "rewards": [], "deleted_at": refunded_at}
        else:
            refund = {"key": key}
        deliveries.append(envelope("transaction.deleted", refunded_at, **refund))
    return deliveries


@st.composite
def shuffled_histories(draw):
    history = []
    for partner_id in draw(st.lists(st.sampled_from(PARTNERS), min_size=0, max_size=2, unique=True)):
        history += draw(partner_history(partner_id))
    for i in range(draw(st.integers(1, 3))):
        history += draw(transaction_history(f"txn_{i}"))
    if draw(st.booleans()):
        history.append(envelope("customer.created", stamp(5), key="cust_txn_0", partner="ptn_a",
                                email="C@x.io", status="active", created_at=stamp(5), updated_at=stamp(5)))
        history.append(envelope("customer.deleted", stamp(300), key="cust_txn_0"))
    duplicates = draw(st.lists(st.sampled_from(history), max_size=4))
    shuffled = draw(st.permutations(history + duplicates))
    # Delivered in batches of random sizes, as jobs carry them.
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    return history, shuffled, batches


def converge(pipe: Pipe, history: list[dict], shuffled: list[dict], batches: list[int]) -> None:
    pipe.reset()
    pipe.deliver(*history)
    expected = pipe.snapshot()
    pipe.reset()
    pipe.deliver_in_batches(shuffled, batches)
    assert pipe.snapshot() == expected


@pytest.mark.parametrize("database, examples", [("sqlite", 60), ("postgresql", 60), ("mariadb", 25)])
def test_any_order_with_duplicates_converges(database, examples, request, tmp_path):
    from tests.conftest import empty_database

    pipe = Pipe(empty_database(database, request, tmp_path))

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shuffled_histories())
    def check(case):
        converge(pipe, *case)

    check()


def test_the_snapshot_sees_a_difference(tmp_path):
    """The property above could pass vacuously if snapshots ignored what matters; they do not."""
    from tests.conftest import migrate

    url = f"sqlite:///{tmp_path / 'control.db'}"
    migrate(url)
    pipe = Pipe(url)
    created = envelope("transaction.created", stamp(1), key="t", amount=1.5, amount_units="USD", partner="ptn_a",
                       rewards=[{"partner": "ptn_a", "amount": 0.5, "amount_units": "USD", "status": "ok"}])
    pipe.deliver(created)
    before = pipe.snapshot()
    pipe.deliver(envelope("transaction.deleted", stamp(2), key="t"))
    after = pipe.snapshot()
    assert before != after
    assert before["owed"] == {"ptn_a": Decimal("0.5")} and after["owed"] == {"ptn_a": Decimal(0)}
