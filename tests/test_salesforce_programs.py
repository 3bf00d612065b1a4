"""Salesforce with several Partnero programs: one flush serves them all, each record with its own
program's mapping, ledger and currency, and one program's trouble stays its own. Through
simple-salesforce's real code path against the HTTPS stand-in, as tests/test_salesforce_sync.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync.cli import main
from sync.core import backoff
from sync.mapping import plan
from sync.ops import metrics
from sync.partnero.samples import CUSTOMER, PARTNER, TRANSACTION
from sync.pipeline.sinks import Work, settlements
from sync.salesforce import org
from sync.services import Services
from sync.settings import Program
from sync.store import bulk_jobs, ledger
from sync.store.inbox import Delivery, DeliveryStatus
from sync.store.org_checks import Verdict
from sync.store.outbox import Outbox, OutboxChange, crm_outbox
from sync.store.warehouse import WarehouseChange
from tests.conftest import salesforce_env
from tests.salesforce_orgs import set_up
from tests.test_salesforce_sync import password_login
from tests.warehouse_helpers import envelope

FRIENDS = "friends"


def serve(settings, fake, redis_conn, *, friends_dir: Path | None = None, threshold: int = 0) -> Services:
    """A worker's services for two programs: ``default`` (its currency the one most used) and
    ``friends`` (EUR, and the mappings of ``friends_dir`` when given)."""
    programs = (
        Program("default", settings.webhook_secrets, currency=None, mappings_dir=settings.mappings_dir, named=True),
        Program(FRIENDS, ("friends-secret",), currency="EUR", mappings_dir=friends_dir or settings.mappings_dir,
                named=True),
    )
    return Services.build(settings.with_overrides(salesforce=password_login(fake), program_list=programs,
                                                  bulk_threshold=threshold), redis_conn)


@pytest.fixture
def services(settings, fake, redis_conn) -> Services:
    return serve(settings, fake, redis_conn)


def deliver(services: Services, program: str, *documents) -> None:
    """Store ``documents`` as deliveries of ``program`` and apply them as the processor applies a
    program's batch: planned with the program's mappings, written with the program (warehouse,
    ledger, outbox with each record's Partnero id, the partners whose commission moved)."""
    bodies = [json.dumps(d).encode() for d in documents]
    stored = services.inbox.store_many([Delivery(b, json.loads(b)["event"], DeliveryStatus.PENDING, program=program)
                                        for b in bodies])
    claimed = services.inbox.claim(len(stored), ids=[s.id for s in stored.values()])
    mappings = services.flusher().mappings[program]
    work = [Work(d, plan(mappings.for_event(d.event_type), json.loads(d.body), d.fingerprint, d.received_at,
                         program=program)) for d in claimed]
    outbox = Outbox(services.clock)
    with services.inbox.engine.begin() as conn:
        states = services.warehouse.apply_many(conn, [WarehouseChange(w.plan.change, w.delivery.id) for w in work],
                                               program=program)
        partners = ledger.settle_many(conn, settlements(work, states), services.clock(), program=program)
        outbox.apply_many(conn, [
            OutboxChange(w.plan.crm, w.plan.mapping.entity, tuple(f.name for f in w.plan.mapping.salesforce.on_delete),
                         w.plan.crm_problem, w.delivery.received_at, entity_id=w.plan.key)
            for w in work if w.plan.crm is not None], program=program)
        outbox.note_commission_change(conn, partners, program=program)


def partner(pid: str = "p1", **changes) -> dict:
    data = {**PARTNER, "id": pid, "email": f"{pid}@example.com", **changes}
    return envelope("partner.created", data["updated_at"], **data)


def customer(key: str = "c1", partner_id: str = "p1") -> dict:
    return envelope("customer.created", "2026-03-14T10:02:54Z", **{**CUSTOMER, "key": key, "partner": partner_id})


def sale(key: str, amount: float, currency: str, partner_id: str = "p1", customer_key: str = "c1") -> dict:
    reward = {**TRANSACTION["rewards"][0], "key": key, "partner": partner_id, "customer": customer_key,
              "amount": amount, "amount_units": currency}
    return envelope("transaction.created", "2026-03-14T10:15:31Z",
                    **{**TRANSACTION, "key": key, "partner": partner_id, "customer": customer_key,
                       "amount_units": currency, "rewards": [reward]})


def outbox_rows(services: Services) -> dict[tuple[str, str, str], dict]:
    with services.inbox.engine.connect() as conn:
        return {(r.program, r.object, r.external_id): dict(r._mapping) for r in conn.execute(sa.select(crm_outbox))}


def contact(fake, external_id: str) -> dict:
    return fake.get("Contact", "Partnero_Partner_Id__c", external_id)


def test_colliding_ids_are_two_contacts_each_with_its_own_programs_totals_in_its_own_currency(services, fake):
    deliver(services, "default", partner(), customer(), sale("t1", 44.7, "USD"))
    # friends' p1 earns in EUR (its currency), and once in USD, which its EUR totals never add in.
    deliver(services, FRIENDS, partner(name="Frida"), customer(),
            sale("t1", 10.0, "EUR"), sale("t2", 5.5, "EUR"), sale("t3", 99.0, "USD"))
    report = services.flusher().flush()
    assert report.failed == report.waiting == 0 and report.synced == 2 + 2 + 4

    mine, theirs = contact(fake, "p1"), contact(fake, "friends:p1")
    assert mine["Id"] != theirs["Id"]
    assert (mine["FirstName"], mine["Partnero_Program__c"]) == ("Maria", "default")
    assert (theirs["FirstName"], theirs["Partnero_Program__c"]) == ("Frida", FRIENDS)
    assert mine["Partnero_Commission_Total__c"] == 44.7  # default's USD, never friends' amounts
    assert theirs["Partnero_Commission_Total__c"] == 15.5  # friends' EUR only
    rows = outbox_rows(services)
    assert rows[(FRIENDS, "Contact", "friends:p1")]["entity_id"] == "p1"
    assert rows[("default", "Contact", "p1")]["salesforce_id"] == mine["Id"]
    assert rows[(FRIENDS, "Contact", "friends:p1")]["salesforce_id"] == theirs["Id"]

    # A later sale of friends' p1 moves only friends' Contact (folded by its partner id).
    deliver(services, FRIENDS, sale("t4", 4.5, "EUR"))
    services.flusher().flush()
    assert contact(fake, "friends:p1")["Partnero_Commission_Total__c"] == 20.0
    assert contact(fake, "p1")["Partnero_Commission_Total__c"] == 44.7


def test_a_transactions_lookups_find_its_own_programs_records(services, fake):
    # Children first, in both programs: the flush still sends every program's parents first.
    deliver(services, FRIENDS, sale("t1", 10.0, "EUR"), customer(), partner())
    deliver(services, "default", sale("t1", 44.7, "USD"), customer(), partner())
    report = services.flusher().flush()
    assert (report.synced, report.waiting) == (6, 0)
    kinds = [call.path.split("/")[-2] for call in fake.calls if call.kind == "collections"]
    assert kinds == ["Contact", "Contact", "Account", "Account", "Partnero_Transaction__c", "Partnero_Transaction__c"]

    for program, prefix in (("default", ""), (FRIENDS, "friends:")):
        sold = fake.get("Partnero_Transaction__c", "Partnero_Transaction_Key__c", f"{prefix}t1")
        account = fake.get("Account", "Partnero_Customer_Key__c", f"{prefix}c1")
        assert sold["Partnero_Program__c"] == program
        assert sold["Partnero_Partner__c"] == contact(fake, f"{prefix}p1")["Id"]
        assert sold["Partnero_Customer__c"] == account["Id"]
        assert account["Partnero_Partner__c"] == contact(fake, f"{prefix}p1")["Id"]


def test_a_waiting_child_is_woken_by_its_own_programs_parent_only(services, fake):
    deliver(services, FRIENDS, customer())
    deliver(services, "default", customer())
    services.flusher().flush()
    rows = outbox_rows(services)
    assert rows[(FRIENDS, "Account", "friends:c1")]["status"] == "waiting"
    assert rows[("default", "Account", "c1")]["status"] == "waiting"

    deliver(services, "default", partner())  # default's p1 arrives; friends' does not
    services.flusher().flush()
    rows = outbox_rows(services)
    assert rows[("default", "Account", "c1")]["status"] == "synced"
    assert rows[(FRIENDS, "Account", "friends:c1")]["status"] == "waiting"
    assert rows[(FRIENDS, "Account", "friends:c1")]["next_attempt_at"] is not None  # not woken


def friends_mappings(settings, tmp_path: Path) -> Path:
    """friends' own mappings: its Contacts also write a field the org does not have."""
    directory = tmp_path / "friends-mappings"
    shutil.copytree(settings.mappings_dir, directory)
    path = directory / "partner.yml"
    path.write_text(path.read_text().replace("    Partnero_Status__c: data.status\n",
                                             "    Partnero_Status__c: data.status\n    Friends_Level__c: data.key\n"))
    return directory


def test_a_refused_call_of_one_program_leaves_the_others_synced(settings, fake, redis_conn, tmp_path, monkeypatch):
    services = serve(settings, fake, redis_conn, friends_dir=friends_mappings(settings, tmp_path))
    fake.hide_field("Contact", "Friends_Level__c")  # not in the org, as far as the integration user sees
    deliver(services, FRIENDS, partner(), customer(), sale("t1", 10.0, "EUR"))
    deliver(services, "default", partner(), customer(), sale("t1", 44.7, "USD"))
    report = services.flusher().flush()

    # friends' Contacts were refused as a whole call (the field is not in the org): its children
    # wait for them; default's records went out, every one of them, after friends' refusal.
    assert report.refused_calls == 1 and report.org_refusal is None and report.stopped is None
    assert report.failed_by_program == {FRIENDS: 1}
    assert "(refused: 1 of friends)" in report.summary()
    rows = outbox_rows(services)
    assert {k[1:]: r["status"] for k, r in rows.items() if k[0] == "default"} == {
        ("Contact", "p1"): "synced", ("Account", "c1"): "synced", ("Partnero_Transaction__c", "t1"): "synced"}
    refused = rows[(FRIENDS, "Contact", "friends:p1")]
    assert refused["status"] == "failed" and refused["error_code"] == "INVALID_FIELD"
    assert "Friends_Level__c" in refused["error_message"] and "friends-mappings" in refused["error_message"]
    assert rows[(FRIENDS, "Account", "friends:c1")]["status"] == "waiting"
    assert contact(fake, "friends:p1") is None and contact(fake, "p1")["Partnero_Commission_Total__c"] == 44.7

    stored = metrics.read(redis_conn)
    assert stored[metrics.SALESFORCE_REFUSALS.key]["program=friends,object=Contact,code=INVALID_FIELD"] == "1"
    assert not any(f.startswith("program=default,") and f.endswith("code=INVALID_FIELD")
                   and "object=Contact" in f for f in stored[metrics.SALESFORCE_REFUSALS.key])
    assert stored[metrics.SALESFORCE_LAG.key]["program=default,count"] == "3"

    # crm-errors names each record's program; crm-retry --program touches that program's only.
    env = {**salesforce_env(fake), **_program_env(settings, tmp_path)}
    listed = CliRunner().invoke(main, ["crm-errors", "--program", FRIENDS], env=env)
    assert listed.exit_code == 0, listed.output
    assert "failed   friends  Contact friends:p1: INVALID_FIELD" in listed.output
    assert "waiting  friends  Account friends:c1" in listed.output and "  default  " not in listed.output
    with services.inbox.engine.begin() as conn:  # a refusal of default's, to see it stays as it is
        conn.execute(crm_outbox.update().where(crm_outbox.c.program == "default", crm_outbox.c.object == "Account")
                     .values(status="failed", error_code="X"))
    retried = CliRunner().invoke(main, ["crm-retry", "--program", FRIENDS], env=env)
    assert retried.exit_code == 0, retried.output
    assert "3 records will be sent again" in retried.output  # friends' Contact, and its two children waiting
    rows = outbox_rows(services)
    assert rows[(FRIENDS, "Contact", "friends:p1")]["status"] == "pending"
    assert rows[("default", "Account", "c1")]["status"] == "failed"
    unknown = CliRunner().invoke(main, ["crm-retry", "--program", "nobody"], env=env)
    assert unknown.exit_code == 2 and "no program 'nobody' is configured" in unknown.output


def _program_env(settings, tmp_path: Path) -> dict[str, str]:
    """The variables of ``serve``'s two programs (and of ``settings``' database, Redis and
    mappings), for the CLI."""
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "MAPPINGS_DIR": str(settings.mappings_dir), "PARTNERO_PROGRAMS": "default,friends",
            "PARTNERO_DEFAULT_WEBHOOK_SECRET": settings.webhook_secrets[0],
            "PARTNERO_FRIENDS_WEBHOOK_SECRET": "friends-secret", "PARTNERO_FRIENDS_CURRENCY": "EUR",
            "PARTNERO_FRIENDS_MAPPINGS_DIR": str(tmp_path / "friends-mappings")}


def test_an_org_wide_refusal_still_ends_the_flush_for_every_program(services, fake):
    deliver(services, "default", partner())
    deliver(services, FRIENDS, partner())
    fake.password = "changed-meanwhile"  # the login is refused: every program's calls would be
    report = services.flusher().flush()
    assert report.org_refusal is not None and report.stopped == "Salesforce refused every call"
    rows = outbox_rows(services)
    assert rows[("default", "Contact", "p1")]["error_code"] == "LOGIN_REFUSED"  # the call that found it
    assert rows[(FRIENDS, "Contact", "friends:p1")]["status"] == "pending"  # not tried: the flush ended


def test_a_bulk_flush_with_two_programs_one_job_each_and_each_jobs_results_to_its_own_rows(
        settings, fake, redis_conn, monkeypatch):
    monkeypatch.setattr(backoff, "BULK_POLL_DELAYS", (0.02, 0.05))
    monkeypatch.setattr(backoff, "GATHER_SECONDS", 0)
    services = serve(settings, fake, redis_conn, threshold=3)
    ids = [f"p{i}" for i in range(5)]
    fake.reject(lambda r: r.get("Partnero_Partner_Id__c") == "friends:p3", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "Not this one")
    deliver(services, "default", *(partner(i) for i in ids), sale("t1", 44.7, "USD", "p1"))
    deliver(services, FRIENDS, *(partner(i, name=f"F{i}") for i in ids), sale("t1", 7.0, "EUR", "p1"))
    report = services.flush_schedule.run_foreground()

    jobs = [j for j in fake.bulk.jobs() if j["object"] == "Contact"]
    assert [(j["state"], j["records"]) for j in jobs] == [("JobComplete", 5), ("JobComplete", 5)]
    with services.inbox.engine.connect() as conn:
        kept = bulk_jobs.running(conn)  # none runs once read back
        programs = [r.program for r in conn.execute(sa.select(bulk_jobs.crm_bulk_jobs.c.program)
                                                    .order_by(bulk_jobs.crm_bulk_jobs.c.id))]
    assert kept == [] and programs == ["default", FRIENDS]
    assert report.failed == 1 and report.failed_by_program == {FRIENDS: 1}
    rows = outbox_rows(services)
    for i in ids:
        assert rows[("default", "Contact", i)]["salesforce_id"] == contact(fake, i)["Id"]
        assert contact(fake, i)["Partnero_Program__c"] == "default"
        if i != "p3":
            assert rows[(FRIENDS, "Contact", f"friends:{i}")]["salesforce_id"] == contact(fake, f"friends:{i}")["Id"]
            assert contact(fake, f"friends:{i}")["FirstName"] == f"F{i}"
    assert rows[(FRIENDS, "Contact", "friends:p3")]["status"] == "failed"
    assert rows[("default", "Contact", "p3")]["status"] == "synced"
    # (a job's CSV is text: this stand-in's untyped field keeps it so)
    assert float(contact(fake, "p1")["Partnero_Commission_Total__c"]) == 44.7
    assert float(contact(fake, "friends:p1")["Partnero_Commission_Total__c"]) == 7.0


def test_a_running_job_of_one_program_holds_up_its_own_children_only(settings, fake, redis_conn, monkeypatch):
    monkeypatch.setattr(backoff, "GATHER_SECONDS", 0)
    services = serve(settings, fake, redis_conn, threshold=3)
    fake.bulk.hold()
    deliver(services, "default", *(partner(f"p{i}") for i in range(5)))
    deliver(services, FRIENDS, partner(), customer())
    report = services.flusher().flush()
    assert report.bulk_wait is not None and [j["program"] for j in report.bulk_jobs] == ["default"]
    assert "of friends" not in report.summary()
    rows = outbox_rows(services)
    assert rows[(FRIENDS, "Account", "friends:c1")]["status"] == "synced"  # friends went on past Contact
    assert rows[("default", "Contact", "p0")]["bulk_job"] is not None
    fake.bulk.release()


def test_the_org_is_held_against_every_programs_mappings(settings, fake, tmp_path):
    from sync.mapping import load_mappings
    from sync.salesforce.client import SalesforceClient
    from sync.store.schema import RESERVED_TABLES

    shipped = load_mappings(settings.mappings_dir, RESERVED_TABLES)
    theirs = load_mappings(friends_mappings(settings, tmp_path), RESERVED_TABLES)
    client = SalesforceClient(password_login(set_up(fake)))
    assert org.check(client, shipped).verdict is Verdict.FITS
    fit = org.check(client, [shipped, theirs, shipped])
    assert fit.verdict is Verdict.MISFIT
    assert [(f.object, f.field) for f in fit.findings] == [("Contact", "Friends_Level__c")]
    assert fit.objects == ("Contact", "Account", "Partnero_Transaction__c")
    assert org.signature([shipped, shipped]) == org.signature(shipped) != org.signature([shipped, theirs])


def test_crm_check_names_a_field_only_one_programs_mappings_need(settings, fake, tmp_path):
    friends_mappings(settings, tmp_path)
    set_up(fake)
    env = {**salesforce_env(fake), **_program_env(settings, tmp_path)}
    checked = CliRunner().invoke(main, ["crm", "check", "--json"], env=env)
    assert checked.exit_code == 1, checked.output
    found = json.loads(checked.output)["findings"]
    assert [(f["object"], f["field"]) for f in found] == [("Contact", "Friends_Level__c")]
    assert "friends-mappings" in found[0]["source"]


def test_a_bulk_job_line_names_its_program_unless_default():
    from sync.salesforce.report import bulk_job_line

    job = {"job_id": "750x", "records": 5, "object": "Contact", "state": "InProgress"}
    assert bulk_job_line(job) == "bulk job 750x (5 Contact): InProgress"
    assert bulk_job_line({**job, "program": "default"}) == "bulk job 750x (5 Contact): InProgress"
    assert bulk_job_line({**job, "program": FRIENDS}) == "bulk job 750x (5 Contact of friends): InProgress"

