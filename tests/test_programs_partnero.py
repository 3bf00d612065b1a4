"""Several Partnero programs through its REST API: backfill, reconcile and webhooks for each
program with its own key (issue 19), against the HTTPS stand-in serving two programs whose ids
collide, on SQLite and PostgreSQL with real Redis.

Program ``affiliate`` lists the objects of ``tests.partnero_helpers``; program ``friends`` lists
objects with the same ids but other values. Each program's records must be what its own lists
say, whatever the other's say.
"""

from __future__ import annotations

import json

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
from tests.conftest import MAPPINGS
from tests.partnero_helpers import at, upstream

PROGRAMS = ("affiliate", "friends")


def friends_upstream() -> dict[str, list[dict]]:
    """What program friends lists: the same ids as affiliate's, other emails, amounts and states."""
    lists = upstream()
    for p in lists["partners"]:
        p.update(email=p["email"].replace("@", "+friends@"), status="active")
    for t in lists["transactions"]:
        t["rewards"] = [{**r, "amount": 1.5, "status": "ok"} for r in t["rewards"]]
        t["deleted_at"] = None
    return lists


@pytest.fixture
def programs(partnero_api):
    """The stand-in with two programs, one key each: (affiliate's, friends')."""
    friends = partnero_api.program()
    for fake, lists in ((partnero_api, upstream()), (friends, friends_upstream())):
        for entity, objects in lists.items():
            for obj in objects:
                fake.add(entity, obj)
    return partnero_api, friends


def env_of(database_url: str, redis_url: str, affiliate, friends, **more: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "MAPPINGS_DIR": str(MAPPINGS),
            "LOG_LEVEL": "WARNING", "PARTNERO_PROGRAMS": ",".join(PROGRAMS), "PARTNERO_API_URL": affiliate.url,
            "REQUESTS_CA_BUNDLE": affiliate.ca_bundle, "PARTNERO_AFFILIATE_API_KEY": affiliate.api_key,
            "PARTNERO_FRIENDS_API_KEY": friends.api_key, "PARTNERO_API_KEY": "", "PARTNERO_WEBHOOK_SECRET": "",
            **more}


def cli(env: dict, *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def partners(url: str) -> dict[tuple[str, str], tuple[str, str]]:
    """Every partner row: (program, id) -> (email, status)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = sa.Table("partners", sa.MetaData(), autoload_with=conn)
            return {(r.program, r.partner_id): (r.email, r.status) for r in conn.execute(sa.select(table))}
    finally:
        engine.dispose()


def owed(url: str) -> dict[tuple[str, str, str], float]:
    """What the ledger holds: (program, transaction, standing) -> amount."""
    engine = sa.create_engine(url)
    t = commission_entries
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.program, t.c.transaction_key, t.c.standing, sa.func.sum(t.c.amount))
                                .group_by(t.c.program, t.c.transaction_key, t.c.standing))
            return {(p, k, s): float(a) for p, k, s, a in rows if a}
    finally:
        engine.dispose()


def test_a_backfill_of_two_programs_with_colliding_ids_keeps_each_programs_records(
        programs, database_url, redis_conn, redis_server_url):
    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends)
    result = cli(env, "backfill")
    assert result.exit_code == 0, result.output
    assert "backfill #1 of program affiliate finished: 20 records, 20 applied" in result.output
    assert "backfill #2 of program friends finished: 20 records, 20 applied" in result.output
    assert "backfill #1 of program affiliate: partners page 1 (7); 7 records read" in result.output  # progress

    rows = partners(database_url)
    assert len(rows) == 14
    assert rows[("affiliate", "ptn_1")] == ("partner1@example.com", "archived")
    assert rows[("friends", "ptn_1")] == ("partner1+friends@example.com", "active")
    ledger = owed(database_url)
    assert ledger[("affiliate", "tx_3", "reversed")] == pytest.approx(6.897)  # refunded in affiliate only
    assert ("friends", "tx_3", "reversed") not in ledger and ledger[("friends", "tx_3", "approved")] == 1.5
    assert {p for p, _, _ in ledger} == set(PROGRAMS)
    with sa.create_engine(database_url).connect() as conn:
        stored = dict(conn.execute(sa.select(webhook_events.c.program, sa.func.count())
                                   .group_by(webhook_events.c.program)).all())
    assert set(stored) == set(PROGRAMS)

    # Each program's run is its own: a second backfill finds both finished, and starts one each.
    runs = Runs(sa.create_engine(database_url))
    assert [(runs.get(i).program, runs.get(i).status) for i in (1, 2)] == [
        ("affiliate", RunStatus.FINISHED), ("friends", RunStatus.FINISHED)]
    again = cli(env, "backfill", "--program", "friends")
    assert again.exit_code == 0 and "backfill #3 of program friends finished: 20 records, 0 applied, 20 unchanged" \
        in again.output
    assert "affiliate" not in again.output
    assert partners(database_url) == rows


def test_a_run_of_one_program_never_resumes_anothers(programs, database_url, redis_conn, redis_server_url):
    affiliate, friends = programs
    settings = Settings.from_env(env_of(database_url, redis_server_url, affiliate, friends))
    services = Services.build(settings, redis_conn)

    def filler(name: str) -> Backfill:
        return Backfill(services, PartneroApi.of(settings.program(name)), program=name, page_size=3)

    pages = []
    stopped = filler("affiliate").run(filler("affiliate").prepare(), on_page=pages.append,
                                      should_stop=lambda: len(pages) == 1)
    assert (stopped.status, stopped.program) == (RunStatus.STOPPED, "affiliate")
    other = filler("friends").prepare()
    assert other.id != stopped.id and (other.program, other.next_page) == ("friends", 1)
    with pytest.raises(ValueError):
        filler("friends").run(stopped)  # a run is carried on by its own program's backfill only
    assert filler("affiliate").prepare().id == stopped.id


def test_reconcile_compares_each_program_with_its_own_records(programs, database_url, redis_conn, redis_server_url):
    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends)
    assert cli(env, "backfill").exit_code == 0
    clean = cli(env, "reconcile", "--json")
    assert clean.exit_code == 0, clean.output
    assert [(r["program"], r["counts"]) for r in json.loads(clean.output)] == [("affiliate", {}), ("friends", {})]

    friends.update("partners", "ptn_4", status="archived", updated_at=at(20))  # no webhook reached us
    report = cli(env, "reconcile")
    assert report.exit_code == 1, report.output
    affiliate_part, friends_part = report.output.split("program friends:")
    assert "program affiliate:" in affiliate_part and "no drift" in affiliate_part
    assert any(line.split()[:2] == ["partners", "ptn_4"] and "archived upstream" in line
               for line in friends_part.splitlines())

    fixed = cli(env, "reconcile", "--fix", "--program", "friends")
    assert fixed.exit_code == 0, fixed.output
    assert "affiliate" not in fixed.output
    rows = partners(database_url)
    assert rows[("friends", "ptn_4")][1] == "archived" and rows[("affiliate", "ptn_4")][1] == "active"
    assert cli(env, "reconcile").exit_code == 0


def test_one_programs_revoked_key_stops_its_backfill_and_the_other_goes_on(
        programs, database_url, redis_conn, redis_server_url):
    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends)
    affiliate.revoke()
    result = CliRunner().invoke(main, ["backfill"], env=env)
    assert result.exit_code == 2
    assert ("partnero-sync: program affiliate: configuration error: Partnero refused the API key (401: not a valid "
            "key): check PARTNERO_AFFILIATE_API_KEY, an API key of program affiliate") in result.stderr
    assert "backfill #2 of program friends finished: 20 records, 20 applied" in result.stdout
    assert affiliate.api_key not in result.output
    runs = Runs(sa.create_engine(database_url))
    assert (runs.get(1).program, runs.get(1).status) == ("affiliate", RunStatus.FAILED)
    assert "PARTNERO_AFFILIATE_API_KEY" in runs.get(1).last_error
    assert (runs.get(2).program, runs.get(2).status) == ("friends", RunStatus.FINISHED)
    assert {program for program, _ in partners(database_url)} == {"friends"}
    assert len(affiliate.requests) - len(friends.requests) == 1  # the stand-in logs every request on the first

    reconciled = CliRunner().invoke(main, ["reconcile", "--json"], env=env)
    assert reconciled.exit_code == 2
    assert [r["program"] for r in json.loads(reconciled.stdout)] == ["friends"]
    assert "program affiliate" in reconciled.stderr


def test_a_program_without_a_key_is_skipped_unless_asked_for(programs, database_url, redis_conn, redis_server_url):
    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends, PARTNERO_FRIENDS_API_KEY="")
    result = CliRunner().invoke(main, ["webhooks", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert "program friends has no API key (PARTNERO_FRIENDS_API_KEY is not set): skipped" in result.stderr
    assert friends.requests == []

    asked = CliRunner().invoke(main, ["backfill", "--program", "friends"], env=env)
    assert asked.exit_code == 2 and "PARTNERO_FRIENDS_API_KEY is not set" in asked.stderr
    unknown = CliRunner().invoke(main, ["reconcile", "--program", "partners"], env=env)
    assert unknown.exit_code == 2 and "there is no program 'partners'" in unknown.stderr
    none = CliRunner().invoke(main, ["reconcile"], env=env | {"PARTNERO_AFFILIATE_API_KEY": ""})
    assert none.exit_code == 2
    assert "PARTNERO_AFFILIATE_API_KEY, PARTNERO_FRIENDS_API_KEY" in none.stderr
    assert Runs(sa.create_engine(database_url)).latest() is None


def test_register_subscribes_each_programs_receiver_and_prints_its_variable(programs):
    affiliate, friends = programs
    env = env_of("sqlite://", "redis://127.0.0.1:1/0", affiliate, friends)
    result = cli(env, "webhooks", "register", "--url", "https://sync.example.com")
    assert result.exit_code == 0, result.output
    [mine], [theirs] = affiliate.webhooks, friends.webhooks
    assert mine["url"] == "https://sync.example.com/webhooks/partnero/affiliate"
    assert theirs["url"] == "https://sync.example.com/webhooks/partnero/friends"
    assert f"\nPARTNERO_AFFILIATE_WEBHOOK_SECRET={mine['signature']}\n" in result.stdout
    assert f"\nPARTNERO_FRIENDS_WEBHOOK_SECRET={theirs['signature']}\n" in result.stdout
    assert result.stdout.startswith(f"program affiliate: created webhook {mine['key']}")

    # Checked against what each program's variable holds now.
    again = cli(env | {"PARTNERO_AFFILIATE_WEBHOOK_SECRET": mine["signature"],
                       "PARTNERO_FRIENDS_WEBHOOK_SECRET": "an-older-secret"},
                "webhooks", "register", "--url", "https://sync.example.com/webhooks/partnero")
    assert again.exit_code == 0, again.output
    assert len(affiliate.webhooks) == len(friends.webhooks) == 1  # updated, not doubled
    assert "(PARTNERO_AFFILIATE_WEBHOOK_SECRET holds it already)" in again.stdout
    friends_part = again.stdout.split("program friends:", 1)[1]
    assert "set both, the new one first" in friends_part

    listed = json.loads(cli(env, "webhooks", "list", "--json").stdout)
    assert [(h["program"], h["key"]) for h in listed] == [("affiliate", mine["key"]), ("friends", theirs["key"])]
    deleted = cli(env, "webhooks", "delete", theirs["key"])
    assert deleted.exit_code == 0 and deleted.stdout == f"deleted webhook {theirs['key']} of program friends\n"
    assert friends.webhooks == [] and len(affiliate.webhooks) == 1
    missing = CliRunner().invoke(main, ["webhooks", "delete", theirs["key"]], env=env)
    assert missing.exit_code == 1 and "in programs affiliate, friends" in missing.stderr


def test_a_backfill_on_a_worker_reads_and_applies_its_own_programs(programs, database_url, redis_conn,
                                                                    redis_server_url):
    from sync.worker.process import build_worker

    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends)
    queued = cli(env, "backfill", "--in-worker", "--entities", "partners")
    assert queued.exit_code == 0, queued.output
    assert "backfill #1 of program affiliate queued" in queued.output
    assert "backfill #2 of program friends queued" in queued.output
    build_worker(Services.build(Settings.from_env(env), redis_conn)).work(burst=True)
    runs = Runs(sa.create_engine(database_url))
    assert [(runs.get(i).program, runs.get(i).status, runs.get(i).records) for i in (1, 2)] == [
        ("affiliate", RunStatus.FINISHED, 7), ("friends", RunStatus.FINISHED, 7)]
    rows = partners(database_url)
    assert rows[("friends", "ptn_1")] == ("partner1+friends@example.com", "active")
    assert rows[("affiliate", "ptn_1")] == ("partner1@example.com", "archived")


def test_a_worker_fails_a_run_of_a_program_no_longer_served(programs, database_url, redis_conn, redis_server_url):
    from sync.worker.process import build_worker

    affiliate, friends = programs
    env = env_of(database_url, redis_server_url, affiliate, friends)
    assert cli(env, "backfill", "--in-worker", "--program", "friends").exit_code == 0
    served = env | {"PARTNERO_PROGRAMS": "affiliate", "PARTNERO_FRIENDS_API_KEY": ""}
    build_worker(Services.build(Settings.from_env(served), redis_conn)).work(burst=True)
    run = Runs(sa.create_engine(database_url)).get(1)
    assert run.status == RunStatus.FAILED
    assert "program friends is not one this deployment serves" in run.last_error
    assert partners(database_url) == {} and friends.requests == []
