"""Sample deliveries shaped like Partnero's, for `send-test`, the tests and the benchmarks."""

from __future__ import annotations

from typing import Any

PARTNER = {
    "id": "ptn_8c1e6f0a",
    "key": "maria-tech",
    "email": "maria@techreviews.io",
    "name": "Maria",
    "surname": "Lopez",
    "status": "active",
    "approved": True,
    "tos": True,
    "custom_fields": [],
    "tags": [{"value": "youtube"}],
    "referral_link": "https://www.example.com?aff=maria-tech",
    "created_at": "2026-01-05T16:44:13.000000Z",
    "updated_at": "2026-03-14T09:21:06.000000Z",
}

CUSTOMER = {
    "key": "acct_000481",
    "partner": "ptn_8c1e6f0a",
    "deleted": False,
    "name": "Daniel",
    "surname": "Kim",
    "email": "daniel.kim@northwind.dev",
    "status": "active",
    "tags": [],
    "created_at": "2026-03-14T10:02:54.000000Z",
    "updated_at": "2026-03-14T10:02:54.000000Z",
    "deleted_at": None,
}

TRANSACTION = {
    "key": "in_1OxY3b2eZvKYlo2C0aQ1",
    "action": "sale",
    "amount": 149.0,
    "amount_units": "USD",
    "partner": "ptn_8c1e6f0a",
    "customer": "acct_000481",
    "credit": False,
    "is_currency": True,
    "created_at": "2026-03-14T10:15:30.000000Z",
    "deleted_at": None,
    "rewards": [
        {
            "key": "in_1OxY3b2eZvKYlo2C0aQ1",
            "action": "sale",
            "status": "review_period",
            "customer": "acct_000481",
            "partner": "ptn_8c1e6f0a",
            "amount": 44.7,
            "amount_units": "USD",
            "created_at": "2026-03-14T10:15:30.000000Z",
            "deleted_at": None,
            "product_type_data": {},
        }
    ],
}

_OBJECTS = {"partner": PARTNER, "customer": CUSTOMER, "transaction": TRANSACTION}


def sample_delivery(event: str = "partner.created", created_at: str = "2026-03-14T10:15:31.000000Z",
                    **data_overrides: Any) -> dict[str, Any]:
    """A delivery envelope for ``event`` around the matching sample object."""
    kind = event.split(".", 1)[0]
    data = dict(_OBJECTS.get(kind, {}))
    data.update(data_overrides)
    return {
        "event": event,
        "url": "https://partnero-sync.example.com/webhooks/partnero",
        "webhook_key": "whk_sample",
        "created_at": created_at,
        "data": data,
    }
