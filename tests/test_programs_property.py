"""Property: one deployment serving several Partnero programs gives each program exactly what it
would get alone.

Two or three programs draw their own histories over the same ids: partners, and transactions whose
states change their rewards, refunded or not, with Partnero's retries, shuffled. Every delivery
goes through the real receiver (its program's URL, signed with its program's secret; program
``friends`` is rotating its secret, and signs with the old one or the new one) and the worker's
drain, all programs interleaved, drained at random points, then flushed to the Salesforce
stand-in. Program ``brand-x`` has mappings of its own that cannot apply to its transactions (their
identity reads a field Partnero does not send): those fail, and only those.

Then each program's history runs alone, in the same order, in a deployment that serves only that
program. Per program, the inbox's outcomes, the warehouse rows, the commission totals (those that
are not all zero) and the Salesforce records must be the same in both runs.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from sync.services import Services
from sync.settings import Settings
from sync.store import ledger
from sync.store.inbox import webhook_events
from sync.worker import jobs
from tests.conftest import MAPPINGS, empty_tables, migrate, signed
from tests.salesforce_orgs import set_up
from tests.test_ledger_convergence import PARTNERS, stamp, transaction_history
from tests.test_salesforce_sync import password_login
from tests.warehouse_helpers import envelope

SECRETS = {"default": ("d-secret",), "friends": ("f-new", "f-old"), "brand-x": ("x-secret",)}
TABLES = {"partners": "partner_id", "customers": "customer_key", "transactions": "transaction_key"}
SALESFORCE_OBJECTS = ("Contact", "Account", "Partnero_Transaction__c")
#: What a row or record holds that says when or in which run it was written, not what it says.
RUN_COLUMNS = {"sync_event_id", "sync_updated_at"}
RUN_FIELDS = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "attributes"}


@st.composite
def partner_history(draw, pid: str) -> list[dict]:
    states = []
    for _ in range(draw(st.integers(1, 3))):
        data = {"id": pid, "email": f"{pid}@example.com", "name": draw(st.sampled_from(["Ana", "Bo", "Cy"])),
                "surname": "Example", "status": draw(st.sampled_from(["active", "pending"])),
                "updated_at": stamp(draw(st.integers(0, 6)) * 10)}
        states.append(envelope(draw(st.sampled_from(["partner.created", "partner.updated"])), data["updated_at"],
                               **data))
    return states


@st.composite
def program_history(draw) -> list[dict]:
    history = []
    for pid in draw(st.lists(st.sampled_from(PARTNERS), min_size=1, max_size=3, unique=True)):
        history += draw(partner_history(pid))
    for i in range(draw(st.integers(1, 2))):
        history += draw(transaction_history(f"txn_{i}"))
    history += draw(st.lists(st.sampled_from(history), max_size=2))  # Partnero's retries: the same bytes
    return draw(st.permutations(history))


@st.composite
def deployments(draw):
    names = ["default", "friends", "brand-x"][: draw(st.integers(2, 3))]
    histories = {name: draw(program_history()) for name in names}
    # Interleave the programs: each keeps its own order.
    slots = draw(st.permutations([name for name in names for _ in histories[name]]))
    taken = Counter()
    sends = []
    for name in slots:
        document = histories[name][taken[name]]
        taken[name] += 1
        sends.append((name, document, draw(st.sampled_from(SECRETS[name]))))
    drains = set(draw(st.lists(st.integers(0, len(sends)), max_size=3)))
    return names, sends, drains


@pytest.fixture(scope="module")
def broken_mappings(tmp_path_factory) -> Path:
    """The shipped mappings, but the transactions' identity reads a field no delivery has."""
    directory = tmp_path_factory.mktemp("brand-x-mappings")
    for path in MAPPINGS.iterdir():
        shutil.copy(path, directory / path.name)
    transaction = directory / "transaction.yml"
    text = transaction.read_text()
    assert "identity: data.key\n" in text
    transaction.write_text(text.replace("identity: data.key\n", "identity: data.transaction_number\n"))
    return directory


def deployment(url: str, redis_url: str, names: list[str], broken: Path, fake) -> Settings:
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(MAPPINGS),
           "PARTNERO_PROGRAMS": ",".join(names),
           **{f"PARTNERO_{n.upper().replace('-', '_')}_WEBHOOK_SECRET": ",".join(SECRETS[n]) for n in names}}
    if "brand-x" in names:
        env["PARTNERO_BRAND_X_MAPPINGS_DIR"] = str(broken)
    return Settings.from_env(env).with_overrides(salesforce=password_login(fake))


def run(settings: Settings, redis_conn, fake, sends: list[tuple[str, dict, str]], drains: set[int]) -> Services:
    """Send ``sends`` through the receiver, draining at ``drains`` and at the end, then flush."""
    empty_tables(settings.database_url)
    redis_conn.flushdb()
    fake.reset()
    client = create_app(settings, redis_connection=redis_conn).test_client()
    services = Services.build(settings, redis_conn)
    for i, (name, document, secret) in enumerate(sends):
        if i in drains:
            jobs.drain(services)
        body, headers = signed(json.dumps(document).encode(), secret=secret)
        assert client.post(f"/webhooks/partnero/{name}", data=body, headers=headers).status_code == 202
    jobs.drain(services)
    services.flusher().flush()
    return services


def held(services: Services, fake, program: str) -> dict:
    """What ``program`` has: its inbox's outcomes, warehouse rows (as their columns' types read
    them: a decimal is a number, whichever text SQLite keeps it as), totals and Salesforce records."""
    t = webhook_events
    found: dict = {}
    with services.inbox.engine.connect() as conn:
        found["inbox"] = sorted(conn.execute(sa.select(t.c.fingerprint, t.c.event_type, t.c.status, t.c.last_error)
                                             .where(t.c.program == program)).all())
        assert all(status != "pending" for _, _, status, _ in found["inbox"])
        for name, key in TABLES.items():
            table = services.warehouse.tables[name].table
            rows = conn.execute(sa.select(table).where(table.c.program == program).order_by(table.c[key]))
            found[name] = [{k: v for k, v in r._mapping.items() if k not in RUN_COLUMNS} for r in rows]
        # What stands; a chain that moved and came back (booked in one drain, moved in the next)
        # leaves a row of zeros that a single drain of the same deliveries never wrote.
        found["totals"] = [t for t in ledger.totals(conn, program=program)
                           if any((t.approved, t.pending, t.rejected, t.reversed))]
    for name in SALESFORCE_OBJECTS:
        records = [{k: v for k, v in r.items() if k not in RUN_FIELDS} for r in fake.records(name)
                   if r.get("Partnero_Program__c") == program]
        found[name] = sorted(records, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return found


def test_each_program_gets_what_it_would_alone(tmp_path, redis_conn, redis_server_url, fake, broken_mappings):
    set_up(fake)
    together_url, alone_url = (f"sqlite:///{tmp_path / name}.db" for name in ("together", "alone"))
    for url in (together_url, alone_url):
        migrate(url)

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(deployments())
    def check(case):
        names, sends, drains = case
        together = deployment(together_url, redis_server_url, names, broken_mappings, fake)
        services = run(together, redis_conn, fake, sends, drains)
        seen = {name: held(services, fake, name) for name in names}
        for name in names:
            alone = deployment(alone_url, redis_server_url, [name], broken_mappings, fake)
            services = run(alone, redis_conn, fake, [s for s in sends if s[0] == name], set())
            assert held(services, fake, name) == seen[name], name
        if "brand-x" in names:  # its broken mapping failed its transactions, and nothing else
            failed = [row for row in seen["brand-x"]["inbox"] if row[2] == "failed"]
            assert failed and {row[1].split(".")[0] for row in failed} == {"transaction"}
            assert not any(row[2] == "failed" for name in names if name != "brand-x" for row in seen[name]["inbox"])

    check()
