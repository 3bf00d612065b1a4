"""Backfill through Partnero's REST API (the HTTPS stand-in), into the warehouse, the ledger and
Salesforce (its stand-in, through simple-salesforce), on SQLite and PostgreSQL with real Redis.

The program (``tests.partnero_helpers``) has objects that changed without a webhook (a partner archived, a reward
approved, a transaction refunded), a refund whose webhook did arrive, and a live webhook newer than
anything listed. Backfill then webhooks, webhooks then backfill, and an interrupted backfill with
webhooks between its halves must all end in the same warehouse, ledger and Salesforce state.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync.cli import main
from sync.partnero.api import PartneroApi
from sync.partnero.backfill import Backfill
from sync.services import Services
from sync.settings import Settings
from sync.store.inbox import webhook_events
from sync.store.ledger import commission_entries
from sync.store.runs import RunStatus, Runs
from tests.conftest import RELATIONSHIPS, empty_tables
from tests.fakes.salesforce import FakeSalesforce
from tests.partnero_helpers import (
    at,
    backfill,
    cli,
    cli_env,
    delivery,
    edited_mappings,
    make_services,
    partner,
    send,
    webhooks,
)

#: What the Salesforce stand-in stamps on each write.
TIMESTAMPS = ("CreatedDate", "LastModifiedDate", "SystemModstamp")


def state(services: Services, salesforce) -> dict:
    """The warehouse's data columns, what each reward stands at in the ledger, and Salesforce."""
    with services.inbox.engine.connect() as conn:
        tables = {}
        for name, mapped in services.warehouse.tables.items():
            rows = conn.execute(sa.select(mapped.table)).mappings().all()
            key = mapped.mapping.warehouse.key
            tables[name] = {r[key]: {c: r[c] for c in mapped.data_columns} for r in rows}
        standing = defaultdict(Decimal)
        for e in conn.execute(sa.select(commission_entries)).mappings():
            standing[(e["transaction_key"], e["reward_ref"], e["partner_id"], e["currency"], e["standing"])] += e["amount"]
    report = services.flusher().flush()
    assert report.failed == 0, report
    crm = {}
    for sobject, external_id in (("Contact", "Partnero_Partner_Id__c"), ("Account", "Partnero_Customer_Key__c"),
                                 ("Partnero_Transaction__c", "Partnero_Transaction_Key__c")):
        crm[sobject] = {
            r[external_id]: {k: ("a record" if isinstance(v, str) and salesforce.get_by_id(v) else v)
                             for k, v in r.items() if k not in ("Id", "attributes", *TIMESTAMPS)}
            for r in salesforce.records(sobject)
        }
    return {"tables": tables, "ledger": {k: v for k, v in standing.items() if v}, "salesforce": crm}


def test_backfill_then_webhooks_webhooks_then_backfill_and_an_interrupted_backfill_converge(
        program, database_url, redis_conn, redis_server_url):
    found = []

    with FakeSalesforce(relationships=RELATIONSHIPS) as sf:
        sf.define_object("Partnero_Transaction__c")
        services = make_services(database_url, redis_server_url, program, sf)
        assert backfill(services).status == RunStatus.FINISHED
        send(services, webhooks())
        found.append(state(services, sf))

    empty_tables(database_url)
    with FakeSalesforce(relationships=RELATIONSHIPS) as sf:
        sf.define_object("Partnero_Transaction__c")
        services = make_services(database_url, redis_server_url, program, sf)
        send(services, webhooks())
        assert backfill(services).status == RunStatus.FINISHED
        found.append(state(services, sf))

    empty_tables(database_url)
    with FakeSalesforce(relationships=RELATIONSHIPS) as sf:
        sf.define_object("Partnero_Transaction__c")
        services = make_services(database_url, redis_server_url, program, sf)
        sent = webhooks()
        send(services, sent[::2])
        pages = []
        stopped = backfill(services, on_page=lambda p: pages.append(p.page), should_stop=lambda: len(pages) == 4)
        assert (stopped.status, stopped.entity, stopped.next_page) == (RunStatus.STOPPED, "customers", 2)
        send(services, sent[1::2])
        program.requests.clear()
        assert backfill(services).status == RunStatus.FINISHED
        # It carried on from its last completed page: no partner was listed again.
        assert [q for _, path, q in program.requests if path.endswith("/partners")] == []
        assert [q["page"] for _, path, q in program.requests if path.endswith("/customers")][0] == "2"
        found.append(state(services, sf))

    assert found[0] == found[1] == found[2]
    final = found[0]
    assert final["tables"]["partners"]["ptn_1"]["status"] == "archived"
    assert final["tables"]["partners"]["ptn_2"]["email"] == "new-address@example.com"
    assert final["tables"]["transactions"]["tx_3"]["refunded"] is True
    assert final["tables"]["transactions"]["tx_6"]["refunded"] is True
    ledger = final["ledger"]
    assert ledger[("tx_2", "ptn_2#1", "ptn_2", "USD", "approved")] == Decimal("6.597")
    assert ledger[("tx_5", "ptn_5#1", "ptn_5", "USD", "rejected")] == Decimal("7.497")
    assert ledger[("tx_3", "ptn_3#1", "ptn_3", "USD", "reversed")] == Decimal("6.897")
    assert not [k for k in ledger if k[0] == "tx_3" and k[4] != "reversed"]
    assert final["salesforce"]["Contact"]["ptn_1"]["Partnero_Status__c"] == "archived"
    assert final["salesforce"]["Partnero_Transaction__c"]["tx_3"]["Status__c"] == "Refunded"


def inbox_count(services: Services) -> int:
    with services.inbox.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(webhook_events)).scalar_one()


def entries(services: Services) -> list[tuple]:
    with services.inbox.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(
            commission_entries.c.transaction_key, commission_entries.c.seq, commission_entries.c.entry_type,
            commission_entries.c.amount, commission_entries.c.standing)))


def test_a_refunded_transaction_is_booked_and_reversed_and_a_second_run_changes_nothing(
        program, database_url, redis_conn, redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    first = backfill(services)
    assert (first.records, first.applied, first.unchanged, first.failed) == (20, 20, 0, 0)
    booked = entries(services)
    assert [e[2:] for e in booked if e[0] == "tx_3"] == [
        ("commission", Decimal("6.897"), "pending"), ("reversal", Decimal("-6.897"), "pending"),
        ("reversal", Decimal("6.897"), "reversed")]
    stored = inbox_count(services)
    assert stored == 22  # a delivery per object, and a second (the refund) for each refunded one

    again = backfill(services)
    assert (again.records, again.applied, again.unchanged) == (20, 0, 20)
    assert entries(services) == booked and inbox_count(services) == stored


def test_an_object_older_than_what_is_held_never_overwrites_it(program, database_url, redis_conn, redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    newer = partner(0, email="newest@example.com", updated_at=at(20))
    send(services, [delivery("partner.updated", at(20), newer)])
    run = backfill(services)
    assert run.unchanged >= 1
    with services.inbox.engine.connect() as conn:
        row = services.warehouse.read(conn, "partners", "ptn_0")
    assert row["email"] == "newest@example.com"


def test_objects_changing_between_pages_end_in_their_newest_state(program, database_url, redis_conn,
                                                                  redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    changed = []

    def meanwhile(entity: str, page: int) -> None:
        if (entity, page) == ("partners", 2) and not changed:
            # ptn_0 (on page 1, already read) changes and a new partner joins; Partnero sends webhooks.
            program.update("partners", "ptn_0", email="moved@example.com", updated_at=at(15))
            program.add("partners", partner(99, updated_at=at(15)))
            changed.append(True)

    program.before_page(meanwhile)
    assert backfill(services).status == RunStatus.FINISHED
    send(services, [delivery("partner.updated", at(15), program.find("partners", "ptn_0")),
                    delivery("partner.created", at(15), partner(99, updated_at=at(15)))])
    with services.inbox.engine.connect() as conn:
        assert services.warehouse.read(conn, "partners", "ptn_0")["email"] == "moved@example.com"
        assert services.warehouse.read(conn, "partners", "ptn_99") is not None


def test_since_skips_objects_that_did_not_change_after_it(program, database_url, redis_conn, redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    filler = Backfill(services, PartneroApi(services.settings.partnero), page_size=3)
    run = filler.run(filler.prepare(since=datetime(2026, 3, 8, tzinfo=timezone.utc)))
    # ptn_1 (archived on the 9th), ptn_2 (the 8th), tx_3 and tx_6 (refunded on the 10th and 11th).
    assert (run.records, run.applied, run.skipped) == (20, 4, 16)


def test_progress_tells_the_rate_and_the_time_left_when_partnero_tells_the_length(
        program, database_url, redis_conn, redis_server_url):
    program.pagination = "length_aware"
    services = make_services(database_url, redis_server_url, program)
    lines = []
    backfill(services, on_page=lambda progress: lines.append(progress.line()))
    assert lines[0].startswith("backfill #1: partners page 1 of 3 (3 of 7, about ")
    assert " left); 3 records read, " in lines[0] and "/s: 3 applied, 0 unchanged" in lines[0]
    assert lines[-1].startswith("backfill #1: transactions page 3 of 3 (8 of 8, about 0 s left); 20 records read")


def test_rate_limits_are_waited_out_as_partnero_asks(program, database_url, redis_conn, redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    waits = []
    program.throttle(2, retry_after=7)
    filler = Backfill(services, PartneroApi(services.settings.partnero, sleep=waits.append), page_size=250)
    assert filler.run(filler.prepare()).status == RunStatus.FINISHED
    assert waits == [7.0, 7.0]


def test_partnero_away_stops_the_run_where_it_was_and_the_next_run_carries_on(
        program, database_url, redis_conn, redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    filler = Backfill(services, PartneroApi(services.settings.partnero, sleep=lambda _: None), page_size=3)
    run = filler.prepare()

    def outage(entity: str, page: int) -> None:
        if (entity, page) == ("customers", 1):  # this page is served; the next ones are not
            program.fail(10, status=503)

    program.before_page(outage)
    with pytest.raises(Exception, match="could not answer"):
        filler.run(run)
    stopped = Runs(services.inbox.engine).get(run.id)
    assert (stopped.status, stopped.entity, stopped.next_page) == (RunStatus.STOPPED, "customers", 2)
    assert "503" in stopped.last_error
    program.before_page(None)
    program.fail(0)
    again = filler.prepare()
    assert again.id == run.id
    assert filler.run(again).status == RunStatus.FINISHED


def test_ctrl_c_stops_a_run_where_it_was_without_raising_attention(program, database_url, redis_conn,
                                                                  redis_server_url):
    from sync.ops.snapshot import backfill_attention

    services = make_services(database_url, redis_server_url, program)

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill(services, should_stop=interrupt)
    run = Runs(services.inbox.engine).latest()
    assert (run.status, run.entity, run.next_page, run.last_error) == (RunStatus.STOPPED, "partners", 2, None)
    assert backfill_attention(run, run.heartbeat_at) == []


def test_the_command_loads_everything_and_reports(program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program)
    result = cli(env, "backfill")
    assert result.exit_code == 0, result.output
    assert "finished: 20 records, 20 applied, 0 unchanged, 0 skipped, 0 failed" in result.output
    assert "backfill #1: partners page 1 (7); 7 records read" in result.output  # progress
    status = cli(env, "status", "--json")
    backfill_status = json.loads(status.output)["backfill"]
    assert (backfill_status["status"], backfill_status["records"]) == (RunStatus.FINISHED, 20)
    again = cli(env, "backfill")
    assert again.exit_code == 0 and "20 unchanged" in again.output


def test_a_refused_api_key_stops_it_at_once_with_a_sentence(program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program) | {"PARTNERO_API_KEY": "not-the-key"}
    result = CliRunner().invoke(main, ["backfill"], env=env)
    assert result.exit_code == 2
    assert "Partnero refused the API key (401" in result.output and "PARTNERO_API_KEY" in result.output
    assert "not-the-key" not in result.output
    assert len(program.requests) == 1
    status = json.loads(cli(env, "status", "--json").output)
    assert status["backfill"]["status"] == RunStatus.FAILED
    assert any("backfill #" in line and "API key" in line for line in status["attention"])
    text = cli(env, "status")
    assert text.exit_code == 1 and "Backfill" in text.output and "failed at partners page 1" in text.output

    from app import create_app

    web = create_app(Settings.from_env(env | {"PARTNERO_WEBHOOK_SECRET": "whsec_test"}))
    scraped = web.test_client().get("/metrics").get_data(as_text=True)
    assert 'partnero_sync_backfill_needs_attention{program="default"} 1.0' in scraped
    assert 'partnero_sync_backfill_records{outcome="read",program="default"} 0.0' in scraped


def test_a_second_backfill_of_the_same_lists_is_refused_while_the_first_is_live(
        program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program)
    services = make_services(database_url, redis_server_url, program)
    first = Backfill(services, PartneroApi(services.settings.partnero)).prepare()  # running, moving
    result = CliRunner().invoke(main, ["backfill"], env=env)
    assert result.exit_code == 1
    assert f"backfill #{first.id} is running" in result.output
    assert Runs(services.inbox.engine).get(first.id).records == 0


def test_plain_http_to_a_partnero_that_is_not_local_is_refused_before_anything_is_sent(
        program, database_url, redis_conn, redis_server_url):
    env = cli_env(database_url, redis_server_url, program) | {"PARTNERO_API_URL": "http://api.partnero.com/v1"}
    for command in (["backfill"], ["reconcile"], ["webhooks", "list"]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 2, result.output
        assert "PARTNERO_API_URL is plain http" in result.output and program.api_key not in result.output
    assert program.requests == [] and Runs(make_services(database_url, redis_server_url, program).inbox.engine
                                           ).latest() is None


def test_a_missing_api_key_is_a_configuration_error(database_url, redis_conn, redis_server_url):
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_server_url, "PARTNERO_API_KEY": ""}
    result = CliRunner().invoke(main, ["backfill"], env=env)
    assert result.exit_code == 2 and "PARTNERO_API_KEY is not set" in result.output


def test_a_backfill_runs_on_a_worker_and_shows_its_progress(program, database_url, redis_conn, redis_server_url):
    from rq import Queue
    from rq.job import Job

    from sync.worker.process import build_worker
    from sync.worker.queues import BACKFILL_QUEUE_NAME

    env = cli_env(database_url, redis_server_url, program)
    result = cli(env, "backfill", "--in-worker", "--entities", "partners,transactions")
    assert result.exit_code == 0, result.output
    [job_id] = Queue(BACKFILL_QUEUE_NAME, connection=redis_conn).get_job_ids()
    assert json.loads(cli(env, "status", "--json").output)["backfill"]["status"] == "queued"

    settings = Settings.from_env(env)
    build_worker(Services.build(settings, redis_conn)).work(burst=True)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "finished"
    assert job.get_meta()["progress"].startswith("backfill #1 finished: 15 records, 15 applied")
    status = json.loads(cli(env, "status", "--json").output)["backfill"]
    assert (status["status"], status["entities"], status["records"]) == (RunStatus.FINISHED, ["partners", "transactions"], 15)


def test_a_worker_backfill_hands_over_between_slices(program, database_url, redis_conn, redis_server_url,
                                                     monkeypatch):
    from rq import Queue

    from sync.worker import jobs
    from sync.worker.process import build_worker
    from sync.worker.queues import BACKFILL_QUEUE_NAME

    monkeypatch.setattr(jobs, "BACKFILL_SLICE_SECONDS", 0)  # every page ends its slice
    env = cli_env(database_url, redis_server_url, program)
    assert cli(env, "backfill", "--in-worker", "--entities", "customers").exit_code == 0
    build_worker(Services.build(Settings.from_env(env), redis_conn)).work(burst=True)
    queue = Queue(BACKFILL_QUEUE_NAME, connection=redis_conn)
    # customers: 5 objects, one page of 250: a slice of one page, and it is finished.
    assert len(queue.finished_job_registry.get_job_ids()) == 1
    run = Runs(make_services(database_url, redis_server_url, program).inbox.engine).latest()
    assert (run.status, run.records) == (RunStatus.FINISHED, 5)


def test_a_deleted_listed_object_without_a_mapping_delete_is_still_applied(program, database_url, redis_conn,
                                                                          redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    program.update("customers", "cus_0", deleted=True, deleted_at=at(12), updated_at=at(12))
    assert backfill(services).status == RunStatus.FINISHED
    with services.inbox.engine.connect() as conn:
        row = services.warehouse.read(conn, "customers", "cus_0")
    assert row["status"] == "deleted" and row["sync_deleted_version"] is not None


def test_an_object_the_mappings_cannot_apply_fails_alone_with_its_reason(program, database_url, redis_conn,
                                                                         redis_server_url):
    services = make_services(database_url, redis_server_url, program)
    program.update("transactions", "tx_0", amount="a lot")
    run = backfill(services)
    assert (run.status, run.failed) == (RunStatus.FINISHED, 1)
    failed = services.inbox.rows(status="failed")
    assert len(failed) == 1 and failed[0].entity_id == "tx_0"
    assert "transaction.yml" in failed[0].last_error and "a lot" not in failed[0].last_error
    with services.inbox.engine.connect() as conn:
        assert services.warehouse.read(conn, "transactions", "tx_1") is not None



@pytest.mark.parametrize("cap", [100, 15])
def test_a_backfill_reads_every_page_when_partnero_pages_fewer_than_asked(program, database_url, redis_conn,
                                                                         redis_server_url, cap):
    program.page_cap = cap  # at most `cap` a page, whatever the 250 the command asks for
    for i in range(7, 2 * cap + 3):
        program.add("partners", partner(i))
    result = cli(cli_env(database_url, redis_server_url, program), "backfill")
    assert result.exit_code == 0, result.output
    total = 2 * cap + 3 + 5 + 8
    assert f"finished: {total} records, {total} applied, 0 unchanged, 0 skipped, 0 failed" in result.output
    asked = [q for _, path, q in program.requests if path.endswith("/partners")]
    assert asked == [{"limit": "250", "page": str(n)} for n in (1, 2, 3)]
    services = make_services(database_url, redis_server_url, program)
    with services.inbox.engine.connect() as conn:
        held = services.warehouse.live_keys(conn, "partners")
    assert held == {f"ptn_{i}" for i in range(2 * cap + 3)}


def test_a_renamed_entity_is_still_loaded_from_the_list_its_events_are_about(program, database_url, redis_conn,
                                                                            redis_server_url, tmp_path):
    mappings = edited_mappings(tmp_path / "mappings", {"partner.yml": ("entity: partner\n", "entity: affiliate\n")})
    env = cli_env(database_url, redis_server_url, program, mappings)
    result = cli(env, "backfill")
    assert result.exit_code == 0, result.output
    assert "finished: 20 records, 20 applied, 0 unchanged, 0 skipped, 0 failed" in result.output
    checked = cli(env, "reconcile", "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["listed"] == {"partners": 7, "customers": 5, "transactions": 8}


def test_a_list_no_mapping_loads_is_refused_before_anything_is_read(program, database_url, redis_conn,
                                                                    redis_server_url, tmp_path):
    mappings = edited_mappings(tmp_path / "mappings", {"customer.yml": None})
    env = cli_env(database_url, redis_server_url, program, mappings)
    for command in (["backfill", "--entities", "customers"], ["backfill", "--in-worker", "--entities", "customers"],
                    ["reconcile", "--entities", "partners,customers"]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 2, result.output
        assert "no mapping file loads Partnero's customers list" in result.output and "list: customers" in result.output
    assert program.requests == []
    assert Runs(make_services(database_url, redis_server_url, program, mappings=mappings).inbox.engine).latest() is None
    # By default, the lists the mapping files load from.
    result = cli(env, "backfill")
    assert result.exit_code == 0, result.output
    assert "finished: 15 records, 15 applied, 0 unchanged, 0 skipped" in result.output
    assert not [path for _, path, _ in program.requests if "customers" in path]


def test_a_backfill_gathers_its_records_for_a_minute_then_asks_for_a_flush_at_once_when_it_ends(
        program, database_url, redis_conn, redis_server_url):
    """Batch work asks for its flush GATHER_SECONDS out (its records go in large jobs, not a call
    per page); the finished backfill asks for one now."""
    from datetime import timedelta

    from rq.registry import ScheduledJobRegistry

    from sync.core.backoff import GATHER_SECONDS

    with FakeSalesforce(relationships=RELATIONSHIPS) as sf:
        sf.define_object("Partnero_Transaction__c")
        services = make_services(database_url, redis_server_url, program, sf)
        crm = services.queue.crm_queue
        pages = []
        stopped = backfill(services, on_page=lambda p: pages.append(p.page), should_stop=lambda: len(pages) == 3)
        assert stopped.status == RunStatus.STOPPED
        scheduled = ScheduledJobRegistry(queue=crm)
        # Three pages applied, one flush asked for, a minute out; none now.
        assert (len(crm), scheduled.count) == (0, 1)
        at = scheduled.get_scheduled_time(scheduled.get_job_ids()[0])
        wait = at.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
        assert timedelta(seconds=GATHER_SECONDS - 5) <= wait <= timedelta(seconds=GATHER_SECONDS)
        assert sf.count("collections") == 0

        assert backfill(services).status == RunStatus.FINISHED
        assert (len(crm), scheduled.count) == (1, 1)
