"""Several Partnero programs in one database (issue 19): every stored row knows its program, and
a record's identity is its program plus its id.

The same ids in two programs are two warehouse rows, two ledger chains and two outbox rows; a merge
or a lock of one program never touches the other's rows; totals never add across programs; the
same bytes sent to two programs are two deliveries, while the program ``default`` keeps its
fingerprints (sha256 of the body). And the upgrade: a database with data at migration 0012 comes to
the head with every row the program ``default``'s, nothing lost, and room for other programs.
On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync.core.errors import ConfigurationError
from sync.mapping import RecordChange, Reward, load_mappings
from sync.mapping.evaluate import Version
from sync.store import bulk_jobs, db, ledger, schema
from sync.store.inbox import Delivery, DeliveryStatus, Inbox, fingerprint
from sync.store.outbox import Outbox, OutboxChange, crm_commission_changes, crm_outbox
from sync.store.runs import Runs
from sync.store.warehouse import Warehouse, WarehouseChange
from tests.conftest import (
    MAPPINGS,
    empty_database,
    held_by_another_transaction,
    mariadb_database,
    postgres_database,
)

AT = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)
UPGRADE_DB = f"partnero_sync_programs_{os.getpid()}"


def partner(key: str, email: str, minutes: int = 0, fp: str = "f" * 64) -> WarehouseChange:
    """A change of partner ``key`` (its email), as a delivery ``minutes`` after AT would make it."""
    values = {"email": email, "status": "approved"}
    version = Version(1, AT + timedelta(minutes=minutes), fp)
    change = RecordChange("partners", "partner_id", key, False, values, {}, version)
    return WarehouseChange(change, event_id=None)


def contact(external_id: str, email: str, entity_id: str | None = None) -> OutboxChange:
    change = RecordChange("Contact", "Partnero_Partner_Id__c", external_id, False, {"Email": email}, {},
                          Version(1, AT, "f" * 64))
    return OutboxChange(change, "partner", (), None, AT, entity_id=entity_id)


def sale(key: str, partner_id: str, amount: str, currency: str = "USD") -> ledger.Settlement:
    reward = Reward(f"{partner_id}#1", partner_id, Decimal(amount), currency, "ok", AT)
    return ledger.Settlement(key, (reward,), False, AT, None, None)


@pytest.fixture
def engine(warehouse_url) -> sa.Engine:
    return db.engine_for(warehouse_url)


@pytest.fixture
def warehouse() -> Warehouse:
    return Warehouse(load_mappings(MAPPINGS))


# -- the inbox --------------------------------------------------------------------------------


def test_default_keeps_its_fingerprint_and_other_programs_have_their_own():
    body = b'{"event": "partner.created"}'
    assert fingerprint(body) == fingerprint(body, "default") == hashlib.sha256(body).hexdigest()
    assert fingerprint(body, "friends") == hashlib.sha256(b"program:friends\n" + body).hexdigest()
    assert len({fingerprint(body), fingerprint(body, "friends"), fingerprint(body, "affiliate")}) == 3
    assert Delivery(body, "partner.created", DeliveryStatus.PENDING).fingerprint == fingerprint(body)
    assert Delivery(body, "partner.created", DeliveryStatus.PENDING, program="friends").fingerprint == \
        fingerprint(body, "friends")


def test_the_same_bytes_sent_to_two_programs_are_two_deliveries(engine):
    inbox = Inbox(engine)
    body = b'{"event": "partner.created", "data": {"id": "p1"}}'
    deliveries = [Delivery(body, "partner.created", DeliveryStatus.PENDING, "p1", program)
                  for program in ("default", "friends", "friends")]
    stored = inbox.store_many(deliveries)
    assert len(stored) == 2 and all(s.created for s in stored.values())
    again = inbox.store_many(deliveries[:2])  # retries: duplicates, per program
    assert not any(s.created for s in again.values())

    claimed = inbox.claim()
    assert sorted((d.program, d.fingerprint) for d in claimed) == sorted(
        [("default", hashlib.sha256(body).hexdigest()), ("friends", fingerprint(body, "friends"))])
    assert inbox.count() == 2 and inbox.count(program="friends") == 1 and inbox.count(program="other") == 0
    assert [d.program for d in inbox.deliveries(program="friends")] == ["friends"]
    assert [r.program for r in inbox.rows(program="default")] == ["default"]
    (row, delivery) = inbox.entry(stored[fingerprint(body, "friends")].id)
    assert row.program == delivery.program == "friends"
    assert inbox.backlog(program="friends").pending == 1 and inbox.backlog().pending == 2
    assert inbox.summary(program="default").counts["pending"] == 1


# -- the warehouse ----------------------------------------------------------------------------


def test_the_same_id_in_two_programs_is_two_warehouse_rows(engine, warehouse):
    with engine.begin() as conn:
        warehouse.apply_many(conn, [partner("p1", "a@example.com")], program="affiliate")
        warehouse.apply_many(conn, [partner("p1", "f@example.com")], program="friends")
        warehouse.apply_many(conn, [partner("p1", "d@example.com")])  # the default program
    with engine.begin() as conn:
        # A newer state of friends' p1 merges into friends' row only.
        warehouse.apply_many(conn, [partner("p1", "f2@example.com", minutes=5)], program="friends")
        # An older state of affiliate's p1 loses to affiliate's own newer one, not to friends'.
        states = warehouse.apply_many(conn, [partner("p1", "a0@example.com", minutes=-5)], program="affiliate")
    assert states[("partners", "p1")].values["email"] == "a@example.com"
    with engine.connect() as conn:
        rows = conn.execute(sa.select(warehouse.tables["partners"].table)).all()
        assert sorted((r.program, r.partner_id, r.email) for r in rows) == [
            ("affiliate", "p1", "a@example.com"), ("default", "p1", "d@example.com"),
            ("friends", "p1", "f2@example.com")]
        assert warehouse.read(conn, "partners", "p1", program="friends")["email"] == "f2@example.com"
        assert warehouse.read(conn, "partners", "p1")["email"] == "d@example.com"
        assert warehouse.read(conn, "partners", "p1", program="nobody") is None
        assert warehouse.states(conn, "partners", ["p1"], program="affiliate")["p1"].values["email"] == "a@example.com"
        assert warehouse.live_keys(conn, "partners", program="friends") == {"p1"}
        assert warehouse.live_keys(conn, "partners", program="nobody") == set()


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request, tmp_path) -> str:
    """The databases with row locks (SQLite has one writer: nothing to keep apart there)."""
    return empty_database(request.param, request, tmp_path)


def test_a_lock_on_one_programs_row_never_holds_up_another_program(server_url, warehouse):
    """A batch of affiliate's holds its p1 locked until it commits: friends' p1 is another row,
    merged meanwhile without waiting."""
    engine, warehouse_url = db.engine_for(server_url), server_url
    with engine.begin() as conn:
        warehouse.apply_many(conn, [partner("p1", "a@example.com")], program="affiliate")
        warehouse.apply_many(conn, [partner("p1", "f@example.com")], program="friends")
    impatient = db.make_engine(warehouse_url, lock_timeout=2)
    try:
        holding = "UPDATE partners SET email = email WHERE program = 'affiliate' AND partner_id = 'p1'"
        with held_by_another_transaction(warehouse_url, holding):
            with impatient.begin() as conn:
                warehouse.apply_many(conn, [partner("p1", "f2@example.com", minutes=1)], program="friends")
            with pytest.raises(sa.exc.OperationalError), impatient.begin() as conn:  # the guard: it does wait
                warehouse.apply_many(conn, [partner("p1", "a2@example.com", minutes=1)], program="affiliate")
    finally:
        impatient.dispose()
    with engine.connect() as conn:
        assert warehouse.read(conn, "partners", "p1", program="friends")["email"] == "f2@example.com"
        assert warehouse.read(conn, "partners", "p1", program="affiliate")["email"] == "a@example.com"


def _mapping_dir(tmp_path: Path, name: str, extra: str) -> Path:
    """A copy of the shipped mappings whose partner.yml has ``extra`` warehouse columns."""
    folder = tmp_path / name
    folder.mkdir()
    for source in MAPPINGS.iterdir():
        text = source.read_text()
        if source.name == "partner.yml":
            first = "  columns:\n    partner_key: data.key\n"
            text = text.replace(first, first.replace("  columns:\n", f"  columns:\n{extra}"))
        (folder / source.name).write_text(text)
    return folder


def test_programs_with_their_own_mappings_share_a_table_with_the_union_of_their_columns(tmp_path, engine):
    mine = load_mappings(_mapping_dir(tmp_path, "mine", "    tier: data.tier\n"))
    theirs = load_mappings(_mapping_dir(tmp_path, "theirs", "    brand: data.brand\n"))
    warehouse = Warehouse([mine, theirs])
    partners = warehouse.tables["partners"].table
    assert {"program", "partner_id", "tier", "brand", "email"} <= set(partners.c.keys())
    assert [c.name for c in partners.primary_key.columns] == ["program", "partner_id"]
    with engine.connect() as conn:
        report = warehouse.migrate(conn)
        conn.commit()
    assert set(report.added_columns) == {"partners.tier", "partners.brand"}


def test_mappings_that_disagree_on_a_shared_table_are_refused_naming_both_files(tmp_path):
    one = load_mappings(_mapping_dir(tmp_path, "one", "    tier: data.tier\n"))
    other = load_mappings(_mapping_dir(tmp_path, "other", "    tier: {from: data.tier, type: integer}\n"))
    with pytest.raises(ConfigurationError) as refused:
        Warehouse([one, other])
    message = str(refused.value)
    assert "tier" in message and str(tmp_path / "one" / "partner.yml") in message
    assert str(tmp_path / "other" / "partner.yml") in message

    rekeyed = tmp_path / "rekeyed"
    rekeyed.mkdir()
    for source in MAPPINGS.iterdir():
        (rekeyed / source.name).write_text(source.read_text().replace("key: partner_id", "key: partner_ref"))
    with pytest.raises(ConfigurationError, match="two key columns: partner_id in .* and partner_ref in"):
        Warehouse([load_mappings(MAPPINGS), load_mappings(rekeyed)])


# -- the ledger -------------------------------------------------------------------------------


def test_the_same_transaction_in_two_programs_is_two_chains_and_totals_never_add(engine):
    with engine.begin() as conn:
        assert ledger.settle_many(conn, [sale("t1", "p1", "10")], AT, program="affiliate") == {"p1"}
        assert ledger.settle_many(conn, [sale("t1", "p1", "3", "EUR")], AT, program="friends") == {"p1"}
        ledger.settle_many(conn, [sale("t1", "p1", "7")], AT)  # the default program
    with engine.begin() as conn:
        # Settling affiliate's t1 again changes nothing (its chain is there), in its program only.
        assert ledger.settle_many(conn, [sale("t1", "p1", "10")], AT, program="affiliate") == set()
        ledger.settle_many(conn, [sale("t1", "p1", "12")], AT, program="affiliate")  # an adjustment
    with engine.connect() as conn:
        affiliate = ledger.entries(conn, "t1", program="affiliate")
        assert [(e["seq"], e["amount"]) for e in affiliate] == [(1, Decimal(10)), (2, Decimal(2))]  # +2: adjusted
        assert [(e["seq"], e["amount"]) for e in ledger.entries(conn, "t1", program="friends")] == [(1, Decimal(3))]
        assert [(e["seq"], e["amount"]) for e in ledger.entries(conn, "t1")] == [(1, Decimal(7))]
        assert sorted(ledger.chains(conn, ["t1"], program="friends")) == ["t1"]
        assert ledger.chains(conn, ["t1"], program="nobody") == {}

        every = ledger.totals(conn, ["p1"])
        assert [(t.program, t.currency, t.owed) for t in every] == [
            ("affiliate", "USD", Decimal(12)), ("default", "USD", Decimal(7)), ("friends", "EUR", Decimal(3))]
        assert [t.owed for t in ledger.totals(conn, ["p1"], program="default")] == [Decimal(7)]
        assert ledger.salesforce_totals(conn, ["p1"], "USD", program="affiliate")["p1"].owed == Decimal(12)
        assert ledger.salesforce_totals(conn, ["p1"], "USD")["p1"].owed == Decimal(7)
        assert ledger.salesforce_totals(conn, ["p1"], "USD", program="friends") == {}
        assert ledger.program_currency(conn, None, program="friends") == "EUR"
        assert ledger.program_currency(conn, None, program="affiliate") == "USD"
        assert ledger.summary(conn, None, program="friends").use == {"EUR": (1, 1)}
        entries, count = ledger.partner_entries(conn, "p1")
        assert count == 4 and {e["program"] for e in entries} == {"affiliate", "friends", "default"}
        assert ledger.partner_entries(conn, "p1", program="friends")[1] == 1


# -- the outbox -------------------------------------------------------------------------------


def test_the_same_record_in_two_programs_is_two_outbox_rows(engine):
    outbox = Outbox(lambda: AT)
    with engine.begin() as conn:
        outbox.apply_many(conn, [contact("p1", "d@example.com")])
        outbox.apply_many(conn, [contact("friends:p1", "f@example.com", entity_id="p1")], program="friends")
        outbox.apply_many(conn, [contact("p1", "a@example.com")], program="affiliate")
    with engine.connect() as conn:
        default = outbox.read(conn, "Contact", "p1")
        friends = outbox.read(conn, "Contact", "friends:p1", program="friends")
        assert (default["program"], default["entity_id"]) == ("default", "p1")
        assert default["fields"] == {"Email": "d@example.com"}
        assert (friends["entity_id"], friends["fields"]) == ("p1", {"Email": "f@example.com"})
        assert outbox.read(conn, "Contact", "p1", program="affiliate")["fields"] == {"Email": "a@example.com"}
        assert outbox.read(conn, "Contact", "friends:p1") is None
        due = outbox.due(conn, "Contact", "sig", program="friends")
        assert [(r.program, r.external_id, r.entity_id) for r in due] == [("friends", "friends:p1", "p1")]
        assert [r.external_id for r in outbox.due(conn, "Contact", "sig")] == ["p1"]
        assert outbox.count_due(conn, "Contact", "sig", 10, program="affiliate") == 1
        assert outbox.counts(conn)["Contact"]["pending"] == 3
        assert outbox.counts(conn, program="friends")["Contact"]["pending"] == 1
        assert outbox.backlog(conn) == 3 and outbox.backlog(conn, program="default") == 1


def test_commission_changes_fold_into_their_programs_rows(engine):
    outbox = Outbox(lambda: AT)
    with engine.begin() as conn:
        outbox.apply_many(conn, [contact("friends:p1", "f@example.com", entity_id="p1")], program="friends")
        outbox.apply_many(conn, [contact("p1", "d@example.com")])
        # Sent: nothing is due until a commission changes.
        conn.execute(crm_outbox.update().values(status="synced"))
        outbox.note_commission_change(conn, ["p1", "p2"], program="friends")
        assert outbox.backlog(conn, program="friends") == 2 and outbox.backlog(conn, program="default") == 0
    with engine.begin() as conn:
        folded = outbox.fold_commission_changes(conn, "Contact", "partner", program="friends",
                                                external_id_of=lambda p: f"friends:{p}")
        assert folded == 2
        assert outbox.fold_commission_changes(conn, "Contact", "partner") == 0  # default noted none
    with engine.connect() as conn:
        rows = conn.execute(sa.select(crm_outbox.c.program, crm_outbox.c.external_id, crm_outbox.c.entity_id,
                                      crm_outbox.c.status, crm_outbox.c.generation)).all()
        assert sorted(tuple(r) for r in rows) == [
            ("default", "p1", "p1", "synced", 1),  # untouched: its commission did not change
            ("friends", "friends:p1", "p1", "pending", 2),
            ("friends", "friends:p2", "p2", "pending", 1),
        ]
        assert conn.execute(sa.select(sa.func.count()).select_from(crm_commission_changes)).scalar_one() == 0


def test_retries_wake_ups_and_errors_keep_to_their_program(engine):
    outbox = Outbox(lambda: AT)
    with engine.begin() as conn:
        for program in ("default", "friends"):
            outbox.apply_many(conn, [contact("p1", "x@example.com")], program=program)
        conn.execute(crm_outbox.update().values(status="waiting", waiting_for="Account/c1", next_attempt_at=AT,
                                                error_code="E", error_at=AT))
        assert outbox.wake_children_of(conn, [("Account", "c1")], program="friends") == 1
        assert outbox.read(conn, "Contact", "p1")["next_attempt_at"] is not None
        assert {e["program"] for e in outbox.errors(conn)} == {"default", "friends"}
        assert [e["program"] for e in outbox.errors(conn, program="default")] == ["default"]
        assert outbox.retry_failed(conn, program="default") == 1
        assert outbox.read(conn, "Contact", "p1", program="friends")["status"] == "waiting"
        assert outbox.retry_failed(conn) == 1


# -- backfill runs and bulk jobs --------------------------------------------------------------


def test_backfill_runs_and_bulk_jobs_are_each_of_a_program(engine):
    runs = Runs(engine, lambda: AT)
    lists = ("partners", "customers")
    mine = runs.start(lists, None)
    theirs = runs.start(lists, None, program="friends")  # the same lists of another program: its own run
    assert mine is not None and theirs is not None
    assert (mine.program, theirs.program) == ("default", "friends")
    assert runs.start(lists, None, program="friends") is None  # one unfinished run per program and lists
    assert runs.unfinished(lists, None).id == mine.id
    assert runs.unfinished(lists, None, program="friends").id == theirs.id
    assert runs.latest().id == theirs.id and runs.latest("default").id == mine.id

    with engine.begin() as conn:
        bulk_jobs.start(conn, "750000000000001", "Contact", 10, AT)
        bulk_jobs.start(conn, "750000000000002", "Contact", 20, AT + timedelta(seconds=1), program="friends")
        assert [j.program for j in bulk_jobs.running(conn)] == ["default", "friends"]
        assert [j.job_id for j in bulk_jobs.running(conn, program="friends")] == ["750000000000002"]
        assert bulk_jobs.last_started(conn, "Contact") == AT
        assert bulk_jobs.last_started(conn, "Contact", program="friends") == AT + timedelta(seconds=1)


# -- the upgrade ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def fresh_url(request, tmp_path) -> Iterator[str]:
    """An empty database, made for one test and dropped after it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
    elif request.param == "postgresql":
        yield from postgres_database(UPGRADE_DB, with_schema=False)
    else:
        yield from mariadb_database(UPGRADE_DB, with_schema=False)


def _tables_before_programs(warehouse: Warehouse) -> list[sa.Table]:
    """The mapped tables as a release before programs made them (keyed by the mapping's key
    alone), each with a column no mapping names any more (``legacy_note``)."""
    metadata = sa.MetaData()
    old = []
    for mapped in warehouse.tables.values():
        columns = [sa.Column(c.name, c.type, primary_key=c.name == mapped.key)
                   for c in mapped.table.columns if c.name != "program"]
        old.append(sa.Table(mapped.table.name, metadata, *columns, sa.Column("legacy_note", sa.Text)))
    return old


def _fill_before_programs(conn, old: list[sa.Table]) -> None:
    """Data in every table, as a single-program release wrote it (its own statements: the
    modules' tables already have the program column)."""
    def table(name, *columns):
        return sa.table(name, *(sa.column(c) for c in columns))

    body = b'{"event": "partner.created", "data": {"id": "p1"}}'
    conn.execute(table("webhook_events", "fingerprint", "event_type", "body", "received_at", "status", "attempts",
                       "entity_id").insert(),
                 [{"fingerprint": hashlib.sha256(body).hexdigest(), "event_type": "partner.created", "body": body,
                   "received_at": AT.replace(tzinfo=None), "status": "processed", "attempts": 1, "entity_id": "p1"}])
    tables = {t.name: t for t in old}
    conn.execute(tables["partners"].insert(), [
        {"partner_id": "p1", "email": "d@example.com", "legacy_note": "kept", "sync_version": AT.replace(tzinfo=None),
         "sync_rank": 1, "sync_fingerprint": "f" * 64},
        {"partner_id": "p2", "email": "e@example.com", "legacy_note": "also kept", "sync_version": None,
         "sync_rank": None, "sync_fingerprint": None}])
    conn.execute(tables["transactions"].insert(), [{"transaction_key": "t1", "legacy_note": "n"}])
    conn.execute(tables["customers"].insert(), [{"customer_key": "c1", "legacy_note": "n"}])
    entries = table("commission_entries", "entry_type", "transaction_key", "reward_ref", "partner_id", "amount",
                    "currency", "reward_status", "recorded_at", "seq", "standing", "is_currency")
    conn.execute(entries.insert(), [
        {"entry_type": "commission", "transaction_key": "t1", "reward_ref": "p1#1", "partner_id": "p1",
         "amount": amount, "currency": "USD", "reward_status": "ok", "recorded_at": AT.replace(tzinfo=None),
         "seq": seq, "standing": "approved", "is_currency": True}
        for seq, amount in ((1, "10.5"), (2, "-0.000001"))])
    outbox = table("crm_outbox", "object", "external_id", "entity", "fields", "generation", "status", "attempts",
                   "sync_version", "sync_rank", "sync_fingerprint")
    conn.execute(outbox.insert(), [{"object": "Contact", "external_id": "p1", "entity": "partner",
                                    "fields": '{"Email": "d@example.com"}', "generation": 1, "status": "pending",
                                    "attempts": 0, "sync_version": AT.replace(tzinfo=None), "sync_rank": 1,
                                    "sync_fingerprint": "f" * 64}])
    conn.execute(table("crm_commission_changes", "partner_id", "changed_at").insert(),
                 [{"partner_id": "p1", "changed_at": AT.replace(tzinfo=None)}])
    conn.execute(table("backfill_runs", "entities", "status", "entity", "next_page", "started_at", "heartbeat_at",
                       "open_scope").insert(),
                 [{"entities": "partners", "status": "stopped", "entity": "partners", "next_page": 3,
                   "started_at": AT.replace(tzinfo=None), "heartbeat_at": AT.replace(tzinfo=None),
                   "open_scope": "partners@all"}])
    conn.execute(table("crm_bulk_jobs", "job_id", "object", "state", "records", "created_at", "updated_at").insert(),
                 [{"job_id": "750000000000009", "object": "Contact", "state": "InProgress", "records": 1,
                   "created_at": AT.replace(tzinfo=None), "updated_at": AT.replace(tzinfo=None)}])


def test_a_single_program_database_upgrades_in_place(fresh_url):
    from alembic import command

    engine = db.engine_for(fresh_url)
    warehouse = Warehouse(load_mappings(MAPPINGS))
    old = _tables_before_programs(warehouse)
    with engine.connect() as conn:
        command.upgrade(schema._config(conn), "0012")
        conn.commit()
        for table in old:
            table.create(conn)
        _fill_before_programs(conn, old)
        conn.commit()
        totals_before = [tuple(r) for r in conn.execute(sa.text(
            "SELECT partner_id, currency, approved, owed FROM partner_commissions"))]
    assert len(totals_before) == 1

    lines = schema.migrate(engine, warehouse)
    assert f"fixed tables migrated from 0012 to {schema.head_revision()}" in lines
    for name, key in (("customers", "customer_key"), ("partners", "partner_id"),
                      ("transactions", "transaction_key")):
        assert f"re-keyed table {name} (program, {key}): its rows are the program default's" in lines
    assert "column partners.legacy_note is no longer in any mapping: kept with its data (drop it by hand if unwanted)" \
        in lines
    again = schema.migrate(engine, warehouse)  # again: nothing to do (the unmapped columns are still told)
    assert again and all(line.startswith("column ") and "legacy_note" in line for line in again)

    inspector = sa.inspect(engine)
    for name in ("webhook_events", "commission_entries", "crm_outbox", "crm_commission_changes", "backfill_runs",
                 "crm_bulk_jobs", *warehouse.tables):
        with engine.connect() as conn:
            programs = conn.execute(sa.text(f"SELECT DISTINCT program FROM {name}")).scalars().all()
        assert programs == ["default"], name
    for name, mapped in warehouse.tables.items():
        assert inspector.get_pk_constraint(name)["constrained_columns"] == ["program", mapped.key]

    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT program, partner_id, email, legacy_note, sync_rank FROM partners"
                                    " ORDER BY partner_id")).all()
        assert [tuple(r) for r in kept] == [("default", "p1", "d@example.com", "kept", 1),
                                           ("default", "p2", "e@example.com", "also kept", None)]
        assert warehouse.read(conn, "partners", "p2")["email"] == "e@example.com"
        owed = [(t.partner_id, t.currency, t.approved, t.owed) for t in ledger.totals(conn, program="default")]
        assert owed == [(p, c, Decimal(a), Decimal(o)) for p, c, a, o in totals_before] == [
            ("p1", "USD", Decimal("10.499999"), Decimal("10.499999"))]
        assert ledger.totals(conn)[0].program == "default"
        old_contact = Outbox().read(conn, "Contact", "p1")
        assert (old_contact["entity_id"], old_contact["fields"]) == ("p1", {"Email": "d@example.com"})
    # A run left unfinished by the old release is found to resume; the old delivery is still a duplicate.
    assert Runs(engine).unfinished(("partners",), None).next_page == 3
    body = b'{"event": "partner.created", "data": {"id": "p1"}}'
    [again] = Inbox(engine).store_many([Delivery(body, "partner.created", DeliveryStatus.PENDING)]).values()
    assert not again.created

    # Another program's records with the same ids live beside default's.
    outbox = Outbox(lambda: AT)
    with engine.begin() as conn:
        warehouse.apply_many(conn, [partner("p1", "f@example.com")], program="friends")
        ledger.settle_many(conn, [sale("t1", "p1", "4")], AT, program="friends")
        outbox.apply_many(conn, [contact("friends:p1", "f@example.com", entity_id="p1")], program="friends")
        outbox.note_commission_change(conn, ["p1"], program="friends")
        bulk_jobs.start(conn, "750000000000010", "Contact", 1, AT, program="friends")
    [fresh] = Inbox(engine).store_many([Delivery(body, "partner.created", DeliveryStatus.PENDING,
                                                 program="friends")]).values()
    assert fresh.created
    assert Runs(engine).start(("partners",), None, program="friends") is not None
    with engine.connect() as conn:
        assert warehouse.read(conn, "partners", "p1")["email"] == "d@example.com"
        assert warehouse.read(conn, "partners", "p1", program="friends")["email"] == "f@example.com"
        assert [(t.program, t.owed) for t in ledger.totals(conn, ["p1"])] == [
            ("default", Decimal("10.499999")), ("friends", Decimal(4))]
        assert [e["seq"] for e in ledger.entries(conn, "t1", program="friends")] == [1]
        assert Outbox().read(conn, "Contact", "p1")["program"] == "default"
        assert Outbox().read(conn, "Contact", "friends:p1", program="friends")["entity_id"] == "p1"
        assert conn.execute(sa.select(sa.func.count()).select_from(crm_outbox)).scalar_one() == 2
