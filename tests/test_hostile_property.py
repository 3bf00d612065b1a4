"""Property: random Partnero-shaped deliveries, some valid and some hostile, sent as concurrent
requests to the real receiver and applied in batches by the real worker. Every delivery the
receiver accepts ends processed or failed, a failure with a short, readable reason that quotes no
payload value (neither in the inbox nor in the logs); every valid delivery is applied, whatever
its batch-mates contain; and what the receiver refuses is answered 400, never 5xx.
"""

from __future__ import annotations

import itertools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from werkzeug.serving import make_server

from app import create_app
from sync.partnero.samples import CUSTOMER, PARTNER, TRANSACTION
from sync.services import Services
from sync.store.inbox import webhook_events
from sync.store.ledger import commission_entries
from sync.worker.process import build_worker
from sync.worker.queues import PartneroWorker
from tests.conftest import signed

#: Every generated text carries this, so a leaked value is found wherever it lands.
MARK = "zqv"
#: How every failure reason starts: the mapping file at fault, or the kind of problem.
REASONS = ("partner.yml: ", "customer.yml: ", "transaction.yml: ", 'delivery has no "data" object',
           "database refused the write: ", "could not be applied: ")
ODD_TEXTS = ["", "   ", "1_000", "١٢٣", "Infinity", "NaN", "1e999999999999999999", "0x1f", "12,50", "½",
             "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2100-01-01T00:00:00Z", "\ud800", "a\x00b",
             "x" * 300]

texts = st.one_of(
    st.sampled_from(ODD_TEXTS),
    st.text(max_size=12).map(lambda t: MARK + t),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\n"]).map(lambda t: MARK + t),
)
scalars = st.one_of(
    st.none(), st.booleans(), texts,
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e13, 1e300, 0.0000001, -0.0]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
#: Bodies the receiver must refuse (signed, so it is the content that is judged).
RAW = [
    b'{"event": "partner.created", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"event": "partner.created", "data": {"id": "p", "v": NaN}}',
    b'{"event": "partner.created", "data": {"id": "p", "id": "q"}}',
    b'{"event": "partner.created", "data": {"id": "\xc3\x28"}}',
]
OBJECTS = {"partner": (PARTNER, "id"), "customer": (CUSTOMER, "key"), "transaction": (TRANSACTION, "key")}
_serial = itertools.count()


@st.composite
def deliveries(draw) -> tuple[list[tuple[dict, bool]], list[bytes]]:
    """A batch: (document, valid) pairs, and raw bodies the receiver refuses."""
    batch = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(sorted(OBJECTS)))
        base, id_field = OBJECTS[kind]
        data = json.loads(json.dumps(base))
        data[id_field] = f"{kind}_{next(_serial)}_{draw(st.integers(0, 10**6))}"
        valid = draw(st.booleans())
        if not valid:
            for field in draw(st.lists(st.sampled_from(sorted({*data, id_field, "rewards"})), min_size=1,
                                       max_size=3, unique=True)):
                data[field] = draw(values)
        created_at = draw(st.sampled_from(["2026-03-14T10:15:31.000000Z", "9999-12-31T23:59:59Z", MARK]))
        # A url of its own: the same content drawn again is a new delivery, not a duplicate.
        batch.append(({"event": f"{kind}.created", "url": f"https://x.example/webhooks/partnero#{next(_serial)}",
                       "webhook_key": "whk_p", "created_at": created_at if not valid else
                       "2026-03-14T10:15:31.000000Z", "data": data}, valid))
    raw = draw(st.lists(st.sampled_from(RAW), max_size=2))
    return batch, raw


def strings(value: Any) -> list[str]:
    """Every text in ``value`` worth looking for in a reason (ids and marked or long texts)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    if isinstance(value, str) and (MARK in value or len(value.strip()) >= 8):
        return [value, value.lower(), value.upper(), value.strip()]
    return []


def test_any_batch_fails_only_its_bad_deliveries_with_bounded_reasons_that_quote_nothing(
        settings, redis_conn, caplog):
    app = create_app(settings, redis_connection=redis_conn)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/webhooks/partnero"
    services = Services.build(settings, redis_conn)

    def post(body: bytes) -> tuple[int, dict]:
        _, headers = signed(body)
        answer = requests.post(base, data=body, headers=headers, timeout=30)
        return answer.status_code, answer.json()

    @examples(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(deliveries())
    def check(case):
        batch, raw = case
        bodies = [json.dumps(document).encode() for document, _ in batch] + raw
        logged = len(caplog.records)
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: the intake commits them together
            answers = list(pool.map(post, bodies))
        for (status, answer), body in zip(answers[len(batch):], raw):
            assert status == 400 and set(answer) == {"error"}, (status, answer)
        for status, answer in answers[:len(batch)]:  # whatever json.dumps writes is a delivery
            assert (status, answer["status"]) == (202, "queued"), (status, answer)
        build_worker(Services.build(settings, redis_conn), worker_class=PartneroWorker).work(burst=True)

        stored = {answer["id"]: document for (status, answer), (document, _) in zip(answers, batch) if status == 202}
        t = webhook_events
        with services.inbox.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(t).where(t.c.id.in_(list(stored))))}
        lines = [r.getMessage() for r in caplog.records[logged:]]
        for row_id, document in stored.items():
            row = rows[row_id]
            assert row.status in ("processed", "failed"), row.status
            if row.status == "failed":
                assert len(row.last_error) <= 500 and row.last_error.startswith(REASONS), row.last_error
            for text in strings(document["data"]) + ([document["created_at"]] if MARK in document["created_at"]
                                                     else []):
                if row.last_error:
                    assert text not in row.last_error, (text, row.last_error)
                assert not any(text in line for line in lines if line.startswith("delivery failed")), text
        for (status, answer), (document, valid) in zip(answers, batch):
            if valid:
                assert rows[answer["id"]].status == "processed", rows[answer["id"]].last_error
                assert_applied(services, document)

    try:
        check()
    finally:
        server.shutdown()


def assert_applied(services: Services, document: dict) -> None:
    """The warehouse (and for a sale, the ledger) holds what a valid delivery says."""
    kind = document["event"].split(".")[0]
    data = document["data"]
    table, key = {"partner": ("partners", data.get("id")), "customer": ("customers", data.get("key")),
                  "transaction": ("transactions", data.get("key"))}[kind]
    with services.inbox.engine.connect() as conn:
        row = services.warehouse.read(conn, table, key)
        assert row is not None, (table, key)
        if kind == "transaction":
            assert row["amount"] == Decimal(str(data["amount"]))
            t = commission_entries
            booked = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.transaction_key == key))
            assert booked.scalar_one() == len(data["rewards"])
        else:
            assert row["email"] == data["email"].strip().lower()
