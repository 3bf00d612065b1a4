"""Property: the commission ledger follows the newest state of every reward, whatever the order.

Histories are generated: transactions whose states change their rewards' status, amount, partner
and currency (and drop or regain a reward), points alongside money, refunds with a full,
empty-rewards or key-only payload (before or after the sale), Partnero's retries (the same
bytes, or the same data sent again later), shuffled and delivered in random batches. Each
partner's totals per currency, kind and standing, read from the ``partner_commissions`` view,
must equal those computed here, independently, from the newest state of each transaction (its
envelope ``created_at``, then its body's sha256 on a tie). Run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.warehouse_helpers import Pipe, envelope

BASE = datetime(2026, 3, 1, tzinfo=timezone.utc)
PARTNERS = ["ptn_a", "ptn_b", "ptn_c"]
#: Partnero's statuses, one it may add one day, and none at all (the key left out).
STATUSES = ["ok", "review_period", "rejected", "on_hold", None]
CURRENCIES = ["USD", "EUR", "eur"]

amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("99999"), places=3, allow_nan=False)


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@st.composite
def reward(draw, key: str, partner: str) -> dict:
    found = {"key": key, "partner": partner, "amount": float(draw(amounts)),
             "amount_units": draw(st.sampled_from(CURRENCIES)), "created_at": stamp(0)}
    status = draw(st.sampled_from(STATUSES))
    if status is not None:
        found["status"] = status
    if draw(st.integers(0, 5)) == 0:
        found["is_currency"] = draw(st.booleans())
    return found


@st.composite
def transaction_history(draw, key: str) -> list[dict]:
    # Rewards carry the transaction's key (as Partnero's do), or keys of their own.
    own_keys = draw(st.booleans())
    slots = [(f"rw_{key}_{i}" if own_keys else key, draw(st.sampled_from(PARTNERS)))
             for i in range(draw(st.integers(1, 3)))]
    states = []
    for step in range(draw(st.integers(1, 4))):
        rewards = []
        for reward_key, partner in slots:
            if draw(st.integers(0, 5)) == 0:
                continue  # this state does not list the reward
            if draw(st.integers(0, 4)) == 0:
                partner = draw(st.sampled_from(PARTNERS))  # moved to another partner
            rewards.append(draw(reward(reward_key, partner)))
        data = {"key": key, "action": "sale", "amount": 100.0, "amount_units": "USD", "partner": slots[0][1],
                "customer": f"cust_{key}", "rewards": rewards}
        if draw(st.integers(0, 3)) == 0:
            data["is_currency"] = draw(st.booleans())  # a points program says so on the transaction
        event = "transaction.created" if step == 0 else draw(st.sampled_from(["transaction.created",
                                                                               "transaction.updated"]))
        # Few distinct times: states sent at the same moment are ordered by their fingerprint.
        states.append(envelope(event, stamp(draw(st.integers(0, 6)) * 10), **data))
    deliveries = list(states)
    if draw(st.booleans()):  # the same data sent again later
        again = draw(st.sampled_from(states))
        deliveries.append({**again, "created_at": stamp(draw(st.integers(0, 8)) * 10 + 5)})
    for _ in range(draw(st.integers(0, 2))):
        payload = draw(st.sampled_from(["full", "empty rewards", "key only"]))
        data = {"key": key} if payload == "key only" else {**states[0]["data"]}
        if payload == "empty rewards":
            data["rewards"] = []
        deliveries.append(envelope("transaction.deleted", stamp(draw(st.integers(0, 9)) * 10 + 1), **data))
    return deliveries


@st.composite
def shuffled_histories(draw):
    history = []
    for i in range(draw(st.integers(1, 3))):
        history += draw(transaction_history(f"txn_{i}"))
    duplicates = draw(st.lists(st.sampled_from(history), max_size=3))  # Partnero's retries: same bytes
    shuffled = draw(st.permutations(history + duplicates))
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    return shuffled, batches


def body(document: dict) -> bytes:
    return json.dumps(document).encode()  # as Pipe.deliver_in_batches stores it


def expected_totals(deliveries: list[dict]) -> dict[tuple[str, str, bool], dict[str, Decimal]]:
    """Each partner's totals, from the newest state of every transaction, computed here."""
    newest: dict[str, tuple] = {}
    refunded: set[str] = set()
    for document in deliveries:
        key = document["data"]["key"]
        if document["event"] == "transaction.deleted":
            refunded.add(key)
            continue
        version = (datetime.fromisoformat(document["created_at"].replace("Z", "+00:00")),
                   hashlib.sha256(body(document)).hexdigest())
        if key not in newest or version > newest[key][0]:
            newest[key] = (version, document["data"])
    sums: dict[tuple[str, str, bool], dict[str, Decimal]] = {}
    for key, (_, data) in newest.items():
        for item in data["rewards"]:
            money = item.get("is_currency", data.get("is_currency", True))
            status = item.get("status")
            standing = ("reversed" if key in refunded else
                        "approved" if status == "ok" else "rejected" if status == "rejected" else "pending")
            row = sums.setdefault((item["partner"], item["amount_units"].upper(), money),
                                  dict.fromkeys(("approved", "pending", "rejected", "reversed"), Decimal(0)))
            row[standing] += Decimal(repr(item["amount"]))
    for row in sums.values():
        row["owed"] = row["approved"] + row["pending"]
    return {k: row for k, row in sums.items() if any(row.values())}


def check(pipe: Pipe, shuffled: list[dict], batches: list[int]) -> None:
    pipe.reset()
    pipe.deliver_in_batches(shuffled, batches)
    totals = {k: row for k, row in pipe.totals().items() if any(row.values())}
    assert totals == expected_totals(shuffled)
    # Each reward stands in one place at most, and its entries are numbered 1, 2, … without a gap.
    chains: dict[tuple[str, str], list[dict]] = {}
    for entry in pipe.entries():
        chains.setdefault((entry["transaction_key"], entry["reward_ref"]), []).append(entry)
    for chain in chains.values():
        assert sorted(e["seq"] for e in chain) == list(range(1, len(chain) + 1))
        places: dict[tuple, Decimal] = {}
        for e in chain:
            place = (e["partner_id"], e["currency"], e["is_currency"], e["standing"])
            places[place] = places.get(place, Decimal(0)) + e["amount"]
        assert len([amount for amount in places.values() if amount != 0]) <= 1, chain


@pytest.mark.parametrize("database, examples", [("sqlite", 80), ("postgresql", 60), ("mariadb", 30)])
def test_the_ledger_follows_the_newest_state_in_any_order(database, examples, request, tmp_path):
    from tests.conftest import empty_database

    pipe = Pipe(empty_database(database, request, tmp_path))

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shuffled_histories())
    def run(case):
        check(pipe, *case)

    run()
