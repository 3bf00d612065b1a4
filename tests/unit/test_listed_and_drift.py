"""A listed object as its deliveries, and how it drifts from what is held: pure functions."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest

from sync.core import envelope
from sync.mapping import load_mappings, plan
from sync.partnero.samples import CUSTOMER, PARTNER, TRANSACTION
from sync.rules import commissions, drift, listed
from sync.rules.records import RecordState, merge
from sync.store.inbox import fingerprint
from tests.conftest import MAPPINGS

MAPPINGS_SET = load_mappings(MAPPINGS)
OBSERVED = datetime(2026, 11, 30, 10, tzinfo=timezone.utc)


def plans(entity: str, obj: dict, observed: datetime = OBSERVED):
    mapping = MAPPINGS_SET.for_list(entity)
    item = listed.listed(mapping, entity, envelope.parse(envelope.dump(obj)), observed, "backfill")
    return item, [plan(mapping, document, fingerprint(body), observed)
                  for (_, document), (_, body) in zip(item.documents, item.bodies())]


def held_after(entity: str, obj: dict, observed: datetime = OBSERVED) -> RecordState:
    """The record as applying ``obj`` leaves it."""
    _, made = plans(entity, obj, observed)
    state = RecordState()
    for p in made:
        state = merge(state, p.change, tombstones(entity))
    return state


def tombstones(entity: str) -> tuple[str, ...]:
    mapping = MAPPINGS_SET.for_list(entity)
    return tuple(f.name for f in mapping.warehouse.on_delete)


def test_a_listed_object_is_the_delivery_of_its_state():
    item, _ = plans("partners", PARTNER)
    assert [event for event, _ in item.documents] == ["partner.updated"]
    event, document = item.documents[0]
    assert document["created_at"] == "2026-11-30T10:00:00.000000Z" and document["source"] == "backfill"
    assert item.object_id == PARTNER["id"]


@pytest.mark.parametrize("entity, obj, deleted", [
    ("transactions", {**TRANSACTION, "deleted_at": "2026-04-01T00:00:00.000000Z"}, True),
    ("customers", {**CUSTOMER, "deleted": True}, True),
    ("partners", {**PARTNER, "status": "deleted"}, True),
    ("customers", CUSTOMER, False),
])
def test_a_deleted_object_is_its_state_then_its_delete(entity, obj, deleted):
    item, _ = plans(entity, obj)
    kind = entity[:-1]  # partners: partner.updated, partner.deleted
    expected = [f"{kind}.updated", f"{kind}.deleted"] if deleted else [f"{kind}.updated"]
    assert [event for event, _ in item.documents] == expected


def test_an_object_held_as_listed_does_not_drift_and_a_changed_one_names_its_columns():
    obj = copy.deepcopy(PARTNER)
    held = held_after("partners", obj)
    _, same = plans("partners", obj, datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert drift.compare("partners", obj, same, held, [], tombstones("partners")) is None

    changed = {**obj, "email": "other@example.com", "updated_at": "2026-04-01T00:00:00.000000Z"}
    _, newer = plans("partners", changed)
    found = drift.compare("partners", changed, newer, held, [], tombstones("partners"))
    assert (found.kind, found.fields) == (drift.DriftKind.STALE, ("email", "updated_at"))

    older = {**obj, "email": "old@example.com", "updated_at": "2026-01-06T00:00:00.000000Z"}
    _, stale = plans("partners", older)
    assert drift.compare("partners", older, stale, held, [], tombstones("partners")) is None

    archived = {**obj, "status": "archived", "updated_at": "2026-04-01T00:00:00.000000Z"}
    _, made = plans("partners", archived)
    assert drift.compare("partners", archived, made, held, [], tombstones("partners")).kind == drift.DriftKind.ARCHIVED


def test_missing_deleted_and_commission_moved():
    obj = copy.deepcopy(TRANSACTION)
    _, made = plans("transactions", obj)
    assert drift.compare("transactions", obj, made, None, [], tombstones("transactions")).kind == drift.DriftKind.MISSING

    held = held_after("transactions", obj)
    reward = made[0].rewards
    booked = commissions.settle(obj["key"], [], reward, False, OBSERVED)
    later = datetime(2026, 12, 1, tzinfo=timezone.utc)
    _, same = plans("transactions", obj, later)
    assert drift.compare("transactions", obj, same, held, booked, tombstones("transactions")) is None

    approved = copy.deepcopy(obj)
    approved["rewards"][0]["status"] = "ok"
    _, moved = plans("transactions", approved, later)
    found = drift.compare("transactions", approved, moved, held, booked, tombstones("transactions"))
    assert (found.kind, found.fields) == (drift.DriftKind.COMMISSION, ("ptn_8c1e6f0a#1",))

    refunded = {**obj, "deleted_at": "2026-04-01T00:00:00.000000Z"}
    _, refund = plans("transactions", refunded, later)
    assert drift.compare("transactions", refunded, refund, held, booked, tombstones("transactions")).kind == drift.DriftKind.DELETED


def test_a_gone_object_becomes_a_delete_of_its_id():
    mapping = MAPPINGS_SET.for_list("customers")
    item = listed.gone(mapping, "customers", "acct_1", OBSERVED, "reconcile")
    [(event, document)] = item.documents
    assert event == "customer.deleted" and document["data"]["key"] == "acct_1"
    assert plan(mapping, document, "f" * 64, OBSERVED).change.key == "acct_1"


def test_changed_at_is_the_latest_of_the_objects_times():
    assert listed.changed_at({"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-02-01T00:00:00Z",
                              "deleted_at": None}) == datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert listed.changed_at({}) is None
