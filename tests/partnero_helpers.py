"""A Partnero program for the backfill and reconciliation tests: what its REST API lists now, and
the webhooks it sent; and the ways the tests apply them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from sync.cli import main
from sync.partnero.api import PartneroApi
from sync.partnero.backfill import Backfill
from sync.services import Services
from sync.settings import Settings
from sync.store.inbox import Delivery, DeliveryStatus
from tests.conftest import MAPPINGS, partnero_env, salesforce_env

PARTNERS, CUSTOMERS, TRANSACTIONS = 7, 5, 8
#: Live: a webhook sent after the lists were read (later than any listed state).
LIVE = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def at(day: int, minute: int = 0) -> str:
    return (datetime(2026, 3, day, 10, tzinfo=timezone.utc) + timedelta(minutes=minute)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def partner(i: int, **changes) -> dict:
    return {"id": f"ptn_{i}", "key": f"ref-{i}", "email": f"partner{i}@example.com", "name": f"Pat{i}",
            "surname": "Doe", "status": "active", "approved": True, "tags": [{"value": "blog"}],
            "created_at": at(1), "updated_at": at(2, i), **changes}


def customer(i: int, **changes) -> dict:
    return {"key": f"cus_{i}", "partner": f"ptn_{i % PARTNERS}", "deleted": False, "name": f"Cu{i}",
            "surname": "Stomer", "email": f"customer{i}@example.com", "status": "active", "tags": [],
            "created_at": at(3), "updated_at": at(3, i), "deleted_at": None, **changes}


def transaction(i: int, status: str = "review_period", **changes) -> dict:
    key = f"tx_{i}"
    amount = Decimal("19.99") + i
    reward = {"key": key, "action": "sale", "status": status, "customer": f"cus_{i % CUSTOMERS}",
              "partner": f"ptn_{i % PARTNERS}", "amount": float(amount * Decimal("0.3")), "amount_units": "USD",
              "created_at": at(4, i), "deleted_at": None, "product_type_data": {}}
    return {"key": key, "action": "sale", "amount": float(amount), "amount_units": "USD",
            "partner": f"ptn_{i % PARTNERS}", "customer": f"cus_{i % CUSTOMERS}", "credit": False,
            "is_currency": True, "created_at": at(4, i), "deleted_at": None, "rewards": [reward], **changes}


def upstream() -> dict[str, list[dict]]:
    """What Partnero lists now."""
    partners = [partner(i) for i in range(PARTNERS)]
    partners[1] = partner(1, status="archived", updated_at=at(9))  # archived: no webhook
    partners[2] = partner(2, email="new-address@example.com", updated_at=at(8))  # its webhook arrives
    transactions = [transaction(i) for i in range(TRANSACTIONS)]
    transactions[2] = transaction(2, status="ok")  # approved: no webhook
    transactions[3] = transaction(3, deleted_at=at(10))  # refunded: no webhook
    transactions[6] = transaction(6, deleted_at=at(11))  # refunded: its webhook arrives
    return {"partners": partners, "customers": [customer(i) for i in range(CUSTOMERS)],
            "transactions": transactions}


def delivery(event: str, sent_at: str, data: dict) -> dict:
    return {"event": event, "url": "https://example.com/webhooks/partnero", "webhook_key": "whk_test",
            "created_at": sent_at, "data": data}


def webhooks() -> list[dict]:
    """What Partnero sent: each object's creation, and the changes that did send a webhook."""
    sent = [delivery("partner.created", at(2, i), partner(i)) for i in range(PARTNERS)]
    sent += [delivery("customer.created", at(3, i), customer(i)) for i in range(CUSTOMERS)]
    sent += [delivery("transaction.created", at(4, i), transaction(i)) for i in range(TRANSACTIONS)]
    sent.append(delivery("partner.updated", at(8), partner(2, email="new-address@example.com", updated_at=at(8))))
    sent.append(delivery("transaction.deleted", at(11), transaction(6, deleted_at=at(11))))
    # Live: tx_5's reward rejected after the lists were read.
    sent.append(delivery("transaction.updated", LIVE, transaction(5, status="rejected")))
    return sent


def make_services(database_url: str, redis_url: str, partnero, salesforce=None, mappings=MAPPINGS) -> Services:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(mappings),
           **partnero_env(partnero), **(salesforce_env(salesforce) if salesforce is not None else {})}
    return Services.build(Settings.from_env(env))


def send(services: Services, documents: list[dict]) -> None:
    """Webhooks, as the worker applies them."""
    bodies = [json.dumps(d).encode() for d in documents]
    stored = services.inbox.store_many([Delivery(b, json.loads(b)["event"], DeliveryStatus.PENDING) for b in bodies])
    events = services.inbox.claim(len(stored), ids=[s.id for s in stored.values()])
    result = services.processor.process_batch(events)
    assert not result.failed, result.failed


def backfill(services: Services, page_size: int = 3, **options):
    filler = Backfill(services, PartneroApi(services.settings.partnero, sleep=lambda _: None), page_size=page_size)
    return filler.run(filler.prepare(), **options)


def cli(env: dict, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def cli_env(database_url: str, redis_url: str, partnero, mappings=MAPPINGS) -> dict:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(mappings),
            "LOG_LEVEL": "WARNING", **partnero_env(partnero)}


def edited_mappings(directory: Path, edits: dict[str, tuple[str, str] | None]) -> Path:
    """A copy of the shipped mapping files in ``directory``: ``edits`` maps a file name to
    (text, replacement) to change in it, or None to leave the file out."""
    directory.mkdir()
    for path in MAPPINGS.iterdir():
        if path.name in edits and edits[path.name] is None:
            continue
        text = path.read_text()
        if path.name in edits:
            old, new = edits[path.name]
            assert old in text, (path.name, old)
            text = text.replace(old, new)
        (directory / path.name).write_text(text)
    return directory
