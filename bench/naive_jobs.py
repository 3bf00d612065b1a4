"""The naive way, for bench/drain.py: one RQ job and one single-record Salesforce call per delivery."""

from __future__ import annotations

import os

from simple_salesforce import Salesforce

from sync.core import envelope
from sync.mapping import plan
from sync.services import Services
from sync.settings import Settings
from sync.store.inbox import Delivery, DeliveryStatus
from sync.store.outbox import wire

_cache: dict = {}


def _services() -> Services:
    # Kept between jobs (the naive run uses RQ's SimpleWorker, as ours does): the comparison is
    # about one job and one call per delivery, not about set-up costs.
    if "services" not in _cache:
        _cache["services"] = Services.build(Settings.from_env())
        _cache["sf"] = Salesforce(instance_url=os.environ["NAIVE_INSTANCE_URL"],
                                  session_id=os.environ["NAIVE_SESSION_ID"])
    return _cache["services"]


def naive_job(body: str) -> None:
    services = _services()
    raw = body.encode()
    document = envelope.parse(raw)
    stored = services.inbox.store_many([Delivery(raw, document["event"], DeliveryStatus.PENDING)])
    events = services.inbox.claim(1, ids=[s.id for s in stored.values()])
    services.processor.process_batch(events)  # the warehouse, as ours does
    mapping = services.mappings.for_event(document["event"])
    planned = plan(mapping, document, "naive", services.clock())
    if planned.crm is None:
        return
    record = {k: v for k, v in wire(planned.crm.values).items() if v is not None or not k.endswith("__r")}
    record.update(wire(planned.crm.tombstone))
    getattr(_cache["sf"], planned.crm.table).upsert(f"{planned.crm.key_column}/{planned.crm.key}", record)
