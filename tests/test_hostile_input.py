"""Odd and hostile content through the real receiver (over HTTP) and the real worker (RQ, the
real processor and database): a bad delivery fails alone with a readable reason that quotes no
value, its batch-mates are applied, Salesforce is refused independently of the warehouse, and
replay and requeue-failed step over what still cannot be applied."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.serving import make_server

from app import create_app
from sync.cli import main
from sync.mapping.transforms import MAX_VALUE_CHARS
from sync.partnero.samples import PARTNER, TRANSACTION
from sync.services import Services
from sync.settings import Settings
from sync.store import ledger
from sync.store.inbox import webhook_events
from sync.store.ledger import commission_entries
from sync.store.outbox import MAPPING_ERROR, Outbox, crm_outbox
from sync.worker.process import build_worker
from sync.worker.queues import PartneroWorker
from tests.conftest import MAPPINGS, salesforce_env, signed
from tests.test_salesforce_sync import password_login
from tests.warehouse_helpers import envelope

URL = "/webhooks/partnero"


@dataclass
class Service:
    """The receiver on a real HTTP server, and the worker run until the queue is empty."""

    settings: Settings
    base: str
    redis: object

    def post(self, *documents: dict | bytes) -> list[tuple[int, dict]]:
        """POST every delivery at once, as concurrent requests (the intake stores them in shared
        commits, so they reach the worker in batches)."""

        def one(document):
            body, headers = signed(document)
            response = requests.post(self.base + URL, data=body, headers=headers, timeout=30)
            return response.status_code, response.json()

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, documents))

    def deliver(self, *documents: dict | bytes) -> list[int]:
        """POST them, run the worker; returns their inbox ids."""
        answers = self.post(*documents)
        assert {status for status, _ in answers} == {202}, answers
        self.work()
        return [answer["id"] for _, answer in answers]

    def work(self) -> None:
        build_worker(Services.build(self.settings, self.redis), worker_class=PartneroWorker).work(burst=True)

    @property
    def services(self) -> Services:
        return Services.build(self.settings, self.redis)

    def inbox(self, ids: list[int]) -> list[tuple[str, str | None]]:
        """(status, last error) of each row."""
        t = webhook_events
        with self.services.inbox.engine.connect() as conn:
            found = {r.id: (r.status, r.last_error) for r in conn.execute(sa.select(t).where(t.c.id.in_(ids)))}
        return [found[i] for i in ids]

    def row(self, table: str, key: str) -> dict | None:
        services = self.services
        with services.inbox.engine.connect() as conn:
            return services.warehouse.read(conn, table, key)

    def cli(self, *args: str, fake=None):
        env = {"DATABASE_URL": self.settings.database_url, "REDIS_URL": self.settings.redis_url,
               "MAPPINGS_DIR": str(self.settings.mappings_dir), **(salesforce_env(fake) if fake else {})}
        return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def service(settings, redis_conn) -> Iterator:
    """Start the receiver with ``settings`` changed as given; ``service()`` is the shipped setup."""
    servers = []

    def start(**changes) -> Service:
        configured = settings.with_overrides(**changes)
        server = make_server("127.0.0.1", 0, create_app(configured, redis_connection=redis_conn), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Service(configured, f"http://127.0.0.1:{server.server_port}", redis_conn)

    yield start
    for server in servers:
        server.shutdown()


def partner(partner_id: str, updated_at: str = "2026-03-14T09:21:06.000000Z", **changes) -> dict:
    return envelope("partner.created", updated_at, **{**PARTNER, "id": partner_id, "updated_at": updated_at,
                                                      **changes})


def sale(key: str, **changes) -> dict:
    return envelope("transaction.created", "2026-03-14T10:15:31.000000Z", **{**TRANSACTION, "key": key, **changes})


def mappings_with(tmp_path: Path, old: str, new: str, name: str = "partner.yml") -> Path:
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    path = directory / name
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    return directory


# -- record ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id, reason",
    [
        (["ptn_1"], "is a list: a record id is a text or a whole number"),
        ({"id": "ptn_1"}, "is an object: a record id is a text or a whole number"),
        (True, "is true/false: a record id is a text or a whole number"),
        ("   ", "is empty in this delivery"),
        (12.5, "is a number with a decimal point: a record id is a text or a whole number"),
        ("p" * 256, "is longer than 255 characters: too long for a record id"),
        ("ptn\n1", "holds control characters or broken Unicode: not a record id"),
        ("ptn_\ud800", "holds control characters or broken Unicode: not a record id"),
    ],
    ids=["a list", "an object", "true", "blank", "a fraction", "too long", "a line break", "a lone surrogate"],
)
def test_a_record_id_that_is_not_one_fails_its_delivery_alone(service, caplog, bad_id, reason):
    receiver = service()
    ids = receiver.deliver(partner("ptn_before"), partner(bad_id), partner(90210), partner("ptn_after"))
    assert receiver.inbox(ids) == [("processed", None), ("failed", f"partner.yml: identity: data.id {reason}"),
                                   ("processed", None), ("processed", None)]
    for key in ("ptn_before", "90210", "ptn_after"):  # a whole number is an id too, as its digits
        assert receiver.row("partners", key)["email"] == PARTNER["email"]
    # One line for the failure, with the delivery's fields; no traceback anywhere.
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("sync", "app"))]
    assert [(r.getMessage(), r.inbox_id) for r in failures] == [(f"delivery failed: partner.yml: identity: data.id "
                                                                 f"{reason}", ids[1])]
    assert not any(r.exc_info for r in caplog.records)


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount, stored, reason",
    [
        ("12.50", Decimal("12.5"), None),
        ("-3", Decimal(-3), None),
        ("1e3", Decimal(1000), None),
        (" 7 ", Decimal(7), None),
        (149, Decimal(149), None),
        ("1_000", None, "a text is not a number"),
        ("١٢٣", None, "a text is not a number"),
        ("Infinity", None, "a text is not a number"),
        ("0x1A", None, "a text is not a number"),
        (1e13, None, "a number of more than 12 digits before the point does not fit NUMERIC(18, 6)"),
        ("1e9999999999999999999999", None, "a number far too large or too small to store"),
        (b"1e400", None, "a number of more than 12 digits before the point does not fit NUMERIC(18, 6)"),
        ("0.0000001", None, "a number with more than 6 decimal places does not fit NUMERIC(18, 6)"),
    ],
    ids=["decimal text", "negative", "exponent", "padded", "json number", "underscores", "arabic digits",
         "infinity", "hex", "too large", "absurd exponent", "json 1e400", "too precise"],
)
def test_only_plain_digits_are_a_number_and_what_does_not_fit_says_so(service, amount, stored, reason):
    receiver = service()
    if isinstance(amount, bytes):  # a JSON number Python's json would not write
        body = json.dumps(sale("tx_odd", amount=0, rewards=[])).replace('"amount": 0', '"amount": ' + amount.decode())
        odd = body.encode()
    else:
        odd = sale("tx_odd", amount=amount, rewards=[])
    ids = receiver.deliver(odd, sale("tx_mate", rewards=[]))
    status, error = receiver.inbox(ids)[0]
    assert receiver.inbox(ids)[1] == ("processed", None)
    if reason is None:
        assert status == "processed" and receiver.row("transactions", "tx_odd")["amount"] == stored
    else:
        assert (status, error) == ("failed", f"transaction.yml: warehouse.columns.amount: {reason}")
        assert receiver.row("transactions", "tx_odd") is None


# -- texts the database cannot hold --------------------------------------------------------------


@pytest.mark.parametrize("value", ["maria\ud800@example.com", "maria\x00@example.com"], ids=["lone surrogate", "NUL"])
def test_text_no_database_can_store_fails_the_delivery_alone(service, value):
    receiver = service()
    ids = receiver.deliver(partner("ptn_odd", email=value), partner("ptn_mate"))
    assert receiver.inbox(ids) == [
        ("failed", "partner.yml: warehouse.columns.email: a text holding a NUL character or broken Unicode (a lone "
                   "surrogate) cannot be stored"),
        ("processed", None)]


def test_a_value_an_expression_blows_up_is_refused_for_its_field(service, tmp_path):
    # Within what the checker allows (twelve times the delivery at worst), beyond what a field stores.
    huge = "join('', [to_string(@), to_string(@)])"
    receiver = service(mappings_dir=mappings_with(tmp_path, "partner_key: data.key", f'partner_key: "{huge}"'))
    filler = "f" * (MAX_VALUE_CHARS * 6 // 10)  # two copies of the delivery are over the limit
    ids = receiver.deliver(partner("ptn_big", key="k", filler=filler))
    [(status, error)] = receiver.inbox(ids)
    assert (status, error) == ("failed", "partner.yml: warehouse.columns.partner_key: a text longer than "
                                         f"{MAX_VALUE_CHARS:,} characters is too long to store")


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("absurd", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2030-01-01T00:00:00Z",
                                    "١٧٧٣٤٨٣٣٣٠", 10**30],
                         ids=["year 9999", "year 1", "years ahead", "arabic digits", "a huge number"])
def test_an_absurd_time_never_pins_a_record(service, absurd):
    receiver = service()
    odd = envelope("partner.updated", "2026-03-14T10:00:00Z", **{**PARTNER, "id": "ptn_t", "updated_at": absurd,
                                                                 "name": "Odd"})
    [odd_id] = receiver.deliver(odd)
    row = receiver.row("partners", "ptn_t")
    assert receiver.inbox([odd_id]) == [("processed", None)]
    assert row["first_name"] == "Odd"
    assert row["sync_version"] == datetime(2026, 3, 14, 10, tzinfo=timezone.utc)  # the delivery's own time
    later = envelope("partner.updated", "2026-03-15T10:00:00Z",
                     **{**PARTNER, "id": "ptn_t", "updated_at": "2026-03-15T09:00:00Z", "name": "Later"})
    receiver.deliver(later)
    assert receiver.row("partners", "ptn_t")["first_name"] == "Later"  # a genuine later update still wins


# -- the ledger: a negative reward is a clawback ----------------------------------------------------


def test_a_negative_reward_is_booked_as_a_clawback_and_a_refund_reverses_it(service):
    receiver = service()
    rewards = [{**TRANSACTION["rewards"][0], "partner": "ptn_a", "amount": 44.7},
               {**TRANSACTION["rewards"][0], "partner": "ptn_b", "amount": -10.25}]
    receiver.deliver(sale("tx_claw", rewards=rewards))
    engine = receiver.services.inbox.engine
    with engine.connect() as conn:
        booked = sorted((e.partner_id, e.entry_type, e.amount) for e in conn.execute(sa.select(commission_entries)))
        assert booked == [("ptn_a", "commission", Decimal("44.7")), ("ptn_b", "commission", Decimal("-10.25"))]
        assert owed(conn) == {"ptn_a": Decimal("44.7"), "ptn_b": Decimal("-10.25")}
    receiver.deliver(envelope("transaction.deleted", "2026-03-20T00:00:00Z", key="tx_claw"))
    with engine.connect() as conn:
        # What stood moves to reversed: out of pending, into reversed, the clawback's sign kept.
        reversals = sorted((e.partner_id, e.standing, e.amount) for e in conn.execute(
            sa.select(commission_entries).where(commission_entries.c.entry_type == "reversal")))
        assert reversals == [("ptn_a", "pending", Decimal("-44.7")), ("ptn_a", "reversed", Decimal("44.7")),
                             ("ptn_b", "pending", Decimal("10.25")), ("ptn_b", "reversed", Decimal("-10.25"))]
        assert owed(conn) == {"ptn_a": Decimal(0), "ptn_b": Decimal(0)}


#: A reward's field as Partnero should not send it, and why its delivery fails (after
#: "transaction.yml: ledger.").
BAD_REWARDS = {
    "partner an object": ({"partner": {"id": "ptn_a"}},
                          "partner: reward 1's partner is an object: a partner id is a text or a whole number"),
    "partner true": ({"partner": True}, "partner: reward 1's partner is true/false: a partner id is a text or a whole "
                                        "number"),
    "partner blank": ({"partner": "   "}, "partner: reward 1's partner is an empty text: a partner id is a text or a "
                                          "whole number"),
    "partner with a line break": ({"partner": "ptn\n1"}, "partner: reward 1's partner holds control characters or "
                                                          "broken Unicode: not a partner id"),
    "partner with an escape": ({"partner": "ptn\x1b[31m"}, "partner: reward 1's partner holds control characters or "
                                                             "broken Unicode: not a partner id"),
    "partner too long": ({"partner": "p" * 256}, "partner: reward 1's partner is longer than 255 characters: too long "
                                                 "for a partner id"),
    "partner a fraction": ({"partner": 12.5}, "partner: reward 1's partner is a number with a decimal point: a partner "
                                              "id is a text or a whole number"),
    "no partner": ({"partner": None}, "partner: reward 1 has no partner"),
    "currency TRUE": ({"amount_units": True}, "currency: reward 1's currency is true/false: a currency is a text such "
                                              "as USD"),
    "currency padded": ({"amount_units": " EUR"}, "currency: reward 1's currency is not a currency code: three capital "
                                                  "letters, such as USD"),
    "currency a word": ({"amount_units": "dollars"}, "currency: reward 1's currency is not a currency code: three "
                                                     "capital letters, such as USD"),
    "currency a number": ({"amount_units": 840}, "currency: reward 1's currency is a number: a currency is a text such "
                                                 "as USD"),
    "is_currency blank": ({"is_currency": ""}, "is_currency: reward 1's is_currency is an empty text: it is true or "
                                               "false (a JSON boolean), or nothing for money"),
    "is_currency text": ({"is_currency": "false"}, "is_currency: reward 1's is_currency is a text: it is true or false "
                                                   "(a JSON boolean), or nothing for money"),
    "is_currency a number": ({"is_currency": 0}, "is_currency: reward 1's is_currency is a number: it is true or false "
                                                 "(a JSON boolean), or nothing for money"),
    "points unit too long": ({"is_currency": False, "amount_units": "loyalty points!!"[:16] + "x"},
                             "currency: reward 1's currency is not a unit for points: at most 16 printable characters, "
                             "not blank"),
    "status an object": ({"status": {"ok": True}}, "status: reward 1's status is an object: a status is a text such as "
                                                   "ok"),
    "status with a control character": ({"status": "ok\x07"}, "status: reward 1's status holds control characters: "
                                                                "not a status"),
    "key an object": ({"key": {"k": 1}}, "key: reward 1's key is an object: a reward key is a text or a whole number"),
    "amount true": ({"amount": True}, "amount: true/false is not a number"),
}


def test_a_reward_field_that_is_not_what_it_should_be_fails_its_delivery_alone(service):
    """Every case of BAD_REWARDS in a delivery of its own, all in one batch with good ones."""
    receiver = service()
    reward = TRANSACTION["rewards"][0]
    odd = [sale(f"tx_odd{n}", rewards=[{**reward, "partner": "ptn_b"}, {**reward, **changes}])
           for n, (changes, _reason) in enumerate(BAD_REWARDS.values())]
    ids = receiver.deliver(sale("tx_before", rewards=[{**reward, "partner": "ptn_a"}]), *odd,
                           sale("tx_after", rewards=[{**reward, "partner": "ptn_c", "amount_units": "usd"}]))
    reasons = [f"transaction.yml: ledger.{reason}".replace("reward 1", "reward 2")
               for _changes, reason in BAD_REWARDS.values()]
    assert receiver.inbox(ids) == [("processed", None), *(("failed", reason) for reason in reasons),
                                   ("processed", None)]
    with receiver.services.inbox.engine.connect() as conn:
        assert owed(conn) == {"ptn_a": Decimal("44.7"), "ptn_c": Decimal("44.7")}  # nothing of the odd ones
    assert receiver.row("transactions", "tx_odd0") is None and receiver.row("transactions", "tx_after") is not None


def test_the_reward_forms_partnero_documents_are_booked(service):
    receiver = service()
    reward = TRANSACTION["rewards"][0]
    receiver.deliver(sale("tx_money", rewards=[{**reward, "partner": 90210, "is_currency": True}]),
                     sale("tx_points", is_currency=False, rewards=[{**reward, "amount_units": "points"}]),
                     sale("tx_plain", rewards=[{**reward, "amount_units": "eur", "key": None}]))
    with receiver.services.inbox.engine.connect() as conn:
        booked = {(t.partner_id, t.currency, t.is_currency, t.owed) for t in ledger.totals(conn)}
    assert booked == {("90210", "USD", True, Decimal("44.7")), (reward["partner"], "POINTS", False, Decimal("44.7")),
                      (reward["partner"], "EUR", True, Decimal("44.7"))}


def owed(conn) -> dict[str, Decimal]:
    """Each partner's commission owed in USD, from the ledger's view."""
    return {t.partner_id: t.owed for t in ledger.totals(conn) if t.currency == "USD"}


# -- Salesforce is a destination of its own ------------------------------------------------------

#: A Contact field over a list of name parts: a delivery whose parts are a number cannot fill it.
FIRST_NAME = ("    FirstName: data.name\n", "    FirstName: \"join(' ', data.name_parts || [data.name])\"\n")
FIRST_NAME_PROBLEM = ("partner.yml: salesforce.fields.FirstName: join() was given number, expects "
                      "array-string")


def test_a_salesforce_field_that_cannot_be_computed_refuses_that_record_only(service, fake, tmp_path):
    receiver = service(mappings_dir=mappings_with(tmp_path, *FIRST_NAME), salesforce=password_login(fake))
    ids = receiver.deliver(partner("ptn_odd", name_parts=42), partner("ptn_fine"),
                           sale("tx_odd", partner="ptn_odd", customer=None,
                                rewards=[{**TRANSACTION["rewards"][0], "partner": "ptn_odd"}]))
    # The warehouse and the ledger have every delivery.
    assert receiver.inbox(ids) == [("processed", None)] * 3
    assert receiver.row("partners", "ptn_odd")["first_name"] == "Maria"
    with receiver.services.inbox.engine.connect() as conn:
        assert owed(conn) == {"ptn_odd": Decimal("44.7")}
        outbox = {r.external_id: r for r in conn.execute(sa.select(crm_outbox))}
    refused = outbox["ptn_odd"]
    assert (refused.status, refused.error_code, refused.error_message) == ("failed", MAPPING_ERROR, FIRST_NAME_PROBLEM)
    assert "FirstName" not in refused.fields and refused.fields["LastName"] == "Lopez"  # what could be computed

    errors = receiver.cli("crm-errors", fake=fake)
    assert f"Contact ptn_odd: {MAPPING_ERROR}: {FIRST_NAME_PROBLEM}" in errors.output
    receiver.services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_fine")["FirstName"] == "Maria"
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_odd") is None  # never sent
    retry = receiver.cli("crm-retry", fake=fake)
    assert "1 records the mapping could not compute (MAPPING_ERROR) are not" in retry.output
    receiver.services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_odd") is None

    # An older delivery with the same problem changes nothing; a newer good one is sent.
    receiver.deliver(partner("ptn_odd", updated_at="2026-03-13T00:00:00.000000Z", name_parts=43))
    receiver.deliver(partner("ptn_odd", updated_at="2026-03-15T00:00:00.000000Z", name="Ana"))
    receiver.services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_odd")["FirstName"] == "Ana"
    with receiver.services.inbox.engine.connect() as conn:
        assert Outbox().refused_by_mapping(conn) == 0


def test_a_replay_after_the_mapping_is_fixed_sends_the_refused_record(service, fake, tmp_path):
    broken = service(mappings_dir=mappings_with(tmp_path, *FIRST_NAME), salesforce=password_login(fake))
    broken.deliver(partner("ptn_odd", name_parts=42))
    fixed = service(salesforce=password_login(fake))  # the shipped mapping: FirstName is data.name
    assert fixed.cli("replay", fake=fake).exit_code == 0
    fixed.services.flusher().flush()
    assert fake.get("Contact", "Partnero_Partner_Id__c", "ptn_odd")["FirstName"] == "Maria"


def test_with_crm_sync_off_the_salesforce_section_is_not_evaluated(service, tmp_path):
    # Every delivery would trip this field: join() over a text.
    receiver = service(mappings_dir=mappings_with(tmp_path, "    FirstName: data.name\n",
                                                  "    FirstName: \"join(' ', data.name)\"\n"))
    ids = receiver.deliver(partner("ptn_1"), partner("ptn_2"))
    assert receiver.inbox(ids) == [("processed", None)] * 2
    with receiver.services.inbox.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(crm_outbox)).scalar_one() == 0


# -- replay and requeue-failed step over what still cannot be applied -------------------------------


def test_replay_reports_what_still_fails_and_goes_on(service):
    receiver = service()
    ids = receiver.deliver(partner("ptn_1"), partner(["not", "an", "id"]), partner("ptn_2"))
    result = receiver.cli("replay")
    assert result.exit_code == 1
    assert "replayed 3: 2 processed, 0 ignored, 1 failed" in result.stdout
    assert result.stderr.splitlines() == [
        "1 failed (left failed; retry them with `requeue-failed` after a fix):",
        f"  inbox #{ids[1]}: partner.yml: identity: data.id is a list: a record id is a text or a whole number"]
    assert receiver.inbox(ids)[0] == receiver.inbox(ids)[2] == ("processed", None)


def test_requeue_failed_skips_what_still_cannot_be_applied_and_requeues_the_rest(service, tmp_path):
    broken = service(mappings_dir=mappings_with(tmp_path, "approved: {from: data.approved, type: boolean}",
                                                "approved: {from: data.email, type: boolean}"))
    ids = broken.deliver(partner("ptn_1"), partner({"bad": "id"}), partner("ptn_2"))
    assert [status for status, _ in broken.inbox(ids)] == ["failed"] * 3
    fixed = service()
    result = fixed.cli("requeue-failed")
    assert result.exit_code == 1
    assert "requeued 2 failed deliveries, a worker woken" in result.stdout
    reason = "partner.yml: identity: data.id is an object: a record id is a text or a whole number"
    assert result.stderr.splitlines() == ["1 still cannot be applied, left failed:", f"  inbox #{ids[1]}: {reason}"]
    assert fixed.inbox([ids[1]]) == [("failed", reason)]  # the reason the current mappings give
    fixed.work()
    assert [status for status, _ in fixed.inbox(ids)] == ["processed", "failed", "processed"]
