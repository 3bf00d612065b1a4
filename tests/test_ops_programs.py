"""What an operator sees of several Partnero programs (issue 19): ``status``, ``status --json``,
``/ops``, ``/metrics``, ``/healthz`` and ``ledger``, with two programs whose records have the same
ids, one program in trouble (failed deliveries, a record Salesforce would refuse) and the other
clean: the trouble shows under its program's name only, and nothing is added across programs.

The rows are made through the store's program-scoped APIs, on SQLite and PostgreSQL, with real
Redis and the Salesforce stand-in (for the outbox figures).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner

from app import create_app
from sync.cli import main
from sync.mapping import RecordChange, Reward, load_mappings, salesforce_key
from sync.mapping.evaluate import Version
from sync.partnero.samples import sample_delivery
from sync.settings import Program
from sync.store import db, ledger
from sync.store.inbox import Delivery, DeliveryStatus, Inbox
from sync.store.outbox import Outbox, OutboxChange
from sync.store.warehouse import Warehouse, WarehouseChange
from tests.conftest import MAPPINGS, salesforce_env
from tests.ops_helpers import AUTH, OPS, Page
from tests.test_metrics import parse
from tests.test_salesforce_sync import password_login

AFFILIATE, FRIENDS = "affiliate", "friends"
AT = datetime(2026, 3, 14, 10, 15, tzinfo=timezone.utc)


@pytest.fixture
def settings(settings, fake):
    """Two programs, affiliate and friends (friends' currency set, affiliate's the most used),
    Salesforce on, the operator's credentials set."""
    programs = (
        Program(AFFILIATE, ("whsec_affiliate",), mappings_dir=MAPPINGS, named=True),
        Program(FRIENDS, ("whsec_friends",), currency="EUR", mappings_dir=MAPPINGS, named=True),
    )
    return settings.with_overrides(program_list=programs, dashboard=OPS, salesforce=password_login(fake))


def cli_env(settings, fake) -> dict[str, str]:
    """The same deployment, as the environment a command reads."""
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "MAPPINGS_DIR": str(MAPPINGS),
            "PARTNERO_PROGRAMS": f"{AFFILIATE},{FRIENDS}", "PARTNERO_FRIENDS_CURRENCY": "EUR", **salesforce_env(fake)}


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@dataclass
class Seeded:
    """The inbox ids of what was stored: each program's partner p1, and friends' failures."""

    partner: dict[str, int]
    failed: list[int]


def seed(settings) -> Seeded:
    """Both programs: partner p1 (the same bytes sent to each) applied to the warehouse, the ledger
    (transaction t1 of p1: 10 USD in affiliate, 7.5 EUR in friends) and the outbox. Friends only:
    three partner deliveries failed, and a record the mapping could not compute (refused)."""
    engine = db.engine_for(settings.database_url)
    inbox = Inbox(engine)
    body = json.dumps(sample_delivery("partner.created", id="p1")).encode()
    stored = inbox.store_many([Delivery(body, "partner.created", DeliveryStatus.PENDING, "p1", program)
                               for program in (AFFILIATE, FRIENDS)])
    partner = {d.program: stored[d.fingerprint].id for d in inbox.claim()}
    inbox.mark_done(list(partner.values()))
    broken = [Delivery(json.dumps(sample_delivery("partner.created", id=f"p{i}")).encode(), "partner.created",
                       DeliveryStatus.PENDING, f"p{i}", FRIENDS) for i in (2, 3, 4)]
    failed = sorted(s.id for s in inbox.store_many(broken).values())
    inbox.claim()
    inbox.mark_failures({event_id: "partner.yml: approved: a text is not true or false" for event_id in failed})
    mappings = load_mappings(MAPPINGS)
    warehouse, contact_mapping = Warehouse(mappings), mappings.for_event("partner.created")
    with engine.begin() as conn:
        for program, email, amount, currency in ((AFFILIATE, "a@example.com", "10", "USD"),
                                                 (FRIENDS, "f@example.com", "7.5", "EUR")):
            change = RecordChange("partners", "partner_id", "p1", False, {"email": email}, {}, Version(1, AT, "f" * 64))
            warehouse.apply_many(conn, [WarehouseChange(change, partner[program])], program=program)
            reward = Reward("p1#1", "p1", Decimal(amount), currency, "ok", AT)
            ledger.settle_many(conn, [ledger.Settlement("t1", (reward,), False, AT, None, None)], AT, program=program)
            external_id = salesforce_key(contact_mapping, "p1", program)  # "affiliate:p1", "friends:p1"
            Outbox().apply_many(conn, [_contact(external_id, "p1", email)], program=program)
        refused = _contact(salesforce_key(contact_mapping, "p9", FRIENDS), "p9", "x@example.com",
                           problem="email: not an email")
        Outbox().apply_many(conn, [refused], program=FRIENDS)
    return Seeded(partner, failed)


def _contact(external_id: str, partner_id: str, email: str, problem: str | None = None) -> OutboxChange:
    change = RecordChange("Contact", "Partnero_Partner_Id__c", external_id, False, {"Email": email}, {},
                          Version(1, AT, "f" * 64))
    return OutboxChange(change, "partner", (), problem, AT, entity_id=partner_id)


# -- status ---------------------------------------------------------------------------------------


def test_status_shows_a_line_per_program_and_the_trouble_under_its_name(settings, fake, redis_conn):
    seed(settings)
    result = run(cli_env(settings, fake), "status")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    programs = lines.index("Programs")
    affiliate, friends = lines[programs + 1], lines[programs + 2]
    assert re.fullmatch(r"  affiliate +pending 0, processed 1, ignored 0, failed 0; nothing pending; "
                        r"Salesforce backlog 1, refused 0; currency USD \(the most used; set "
                        r"PARTNERO_AFFILIATE_CURRENCY to choose\)", affiliate), affiliate
    assert re.fullmatch(r"  friends +pending 0, processed 1, ignored 0, failed 3; nothing pending; "
                        r"Salesforce backlog 1, refused 1; currency EUR \(PARTNERO_FRIENDS_CURRENCY\)", friends), friends
    reasons = lines[lines.index("Needs attention") + 1:]
    assert reasons == [
        "  - friends: 3 deliveries failed: see `partnero-sync status` and /ops?program=friends, then "
        "`partnero-sync requeue-failed --program friends` after a fix",
        "  - friends: Salesforce refused 1 records: see `partnero-sync crm-errors`",
    ]
    # The inbox above is every program's added up, as before.
    assert re.search(r"^  failed +3$", result.output, re.M)
    assert "Ledger" not in lines  # never one currency summary across programs


def test_status_json_has_each_programs_figures(settings, fake, redis_conn):
    seed(settings)
    result = run(cli_env(settings, fake), "status", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert list(report["programs"]) == [AFFILIATE, FRIENDS]
    affiliate, friends = report["programs"][AFFILIATE], report["programs"][FRIENDS]
    assert affiliate["inbox"]["by_status"] == {"pending": 0, "processed": 1, "ignored": 0, "failed": 0}
    assert friends["inbox"]["by_status"] == {"pending": 0, "processed": 1, "ignored": 0, "failed": 3}
    assert report["inbox"]["by_status"]["failed"] == 3 and report["inbox"]["by_status"]["processed"] == 2
    assert affiliate["attention"] == []
    assert friends["attention"][0].startswith("3 deliveries failed: ")
    assert [reason.split(":")[0] for reason in report["attention"]] == [FRIENDS, FRIENDS]
    assert affiliate["salesforce"]["by_object"]["Contact"] == {"pending": 1, "waiting": 0, "synced": 0, "failed": 0}
    assert (friends["salesforce"]["backlog"], friends["salesforce"]["refused"]) == (1, 1)
    assert report["salesforce"]["refused"] == 1 and report["salesforce"]["backlog"] == 2
    assert "problem" in report["salesforce"] and "problem" not in friends["salesforce"]
    # Each program's ledger in its own currency; none across them.
    assert report["ledger"] is None
    assert affiliate["ledger"]["program_currency"] == "USD" and affiliate["ledger"]["program_currency_from"] == \
        "most used"
    assert friends["ledger"]["by_currency"] == {"EUR": {"transactions": 1, "partners": 1}}


# -- /ops -----------------------------------------------------------------------------------------


def test_ops_lists_the_program_and_filters_by_it(settings, redis_conn):
    seeded = seed(settings)
    client = create_app(settings).test_client()
    everything = _get(client, "/ops")
    assert everything.row_ids == sorted([*seeded.partner.values(), *seeded.failed], reverse=True)
    assert everything.value("count-failed") == "3"
    html = everything.html
    assert '<option value="affiliate">affiliate</option>' in html and '<option value="friends">friends</option>' in html
    assert f'<td class="c-program" data-label="Program"><a href="/ops/?program=affiliate"' in html

    friends = _get(client, "/ops", program=FRIENDS)
    assert friends.row_ids == sorted([seeded.partner[FRIENDS], *seeded.failed], reverse=True)
    assert '<option value="friends" selected>friends</option>' in friends.html
    assert friends.value("count-failed") == "3" and friends.value("crm-refused") == "1"
    affiliate = _get(client, "/ops", program=AFFILIATE)
    assert affiliate.row_ids == [seeded.partner[AFFILIATE]]
    assert affiliate.value("count-failed") == "0" and affiliate.value("count-processed") == "1"
    assert affiliate.value("crm-refused") == "0"
    # The same record id in both programs: the record's link stays in its program.
    assert f"/ops/?entity_id=p1&program={AFFILIATE}" in affiliate.links
    # A program this deployment does not serve is no filter at all, and no error.
    for unknown in ("nobody", "", "<script>", "friends' OR 1=1"):
        assert _get(client, "/ops", program=unknown).row_ids == everything.row_ids


def test_a_deliverys_story_is_of_its_program(settings, redis_conn):
    seeded = seed(settings)
    client = create_app(settings).test_client()
    for program, email in ((AFFILIATE, "a@example.com"), (FRIENDS, "f@example.com")):
        page = _get(client, f"/ops/deliveries/{seeded.partner[program]}")
        assert page.text("program") == program
        assert email in page.text("warehouse")
        assert "The row holds this delivery's state." in page.text("warehouse")
        assert page.text("crm").startswith("Status pending")
        assert f"Partnero_Partner_Id__c = {program}:p1" in page.html  # the shipped mapping's key
        assert f"/ops/?entity_id=p1&program={program}" in page.links


def test_one_program_shows_no_program_column_or_filter(settings, redis_conn):
    seed(settings)
    client = create_app(settings.with_overrides(program_list=None)).test_client()  # one program: default
    page = _get(client, "/ops")
    assert len(page.row_ids) == 5
    assert '<select name="program">' not in page.html and '<td class="c-program"' not in page.html


def _get(client, path: str, **query) -> Page:
    response = client.get(path, query_string=query or None, headers=AUTH)
    assert response.status_code == 200, response.data[:500]
    return Page(response.data)


# -- /metrics and /healthz ------------------------------------------------------------------------


def test_metrics_gauges_have_a_program_label(settings, redis_conn):
    seed(settings)
    client = create_app(settings).test_client()
    found = parse(client.get("/metrics", headers=AUTH).get_data(as_text=True))
    deliveries = found["partnero_sync_inbox_deliveries"]  # (program, status)
    assert deliveries[(AFFILIATE, "failed")] == 0 and deliveries[(FRIENDS, "failed")] == 3
    assert deliveries[(AFFILIATE, "processed")] == deliveries[(FRIENDS, "processed")] == 1
    assert found["partnero_sync_oldest_pending_age_seconds"] == {(AFFILIATE,): 0, (FRIENDS,): 0}
    records = found["partnero_sync_crm_outbox_records"]  # (object, program, status)
    assert records[("Contact", AFFILIATE, "failed")] == 0 and records[("Contact", FRIENDS, "failed")] == 1
    assert records[("Contact", AFFILIATE, "pending")] == records[("Contact", FRIENDS, "pending")] == 1
    assert found["partnero_sync_queue_workers"] == {(): 0}  # the queue is every program's


def test_the_operators_health_report_has_each_program(settings, redis_conn):
    seed(settings)
    client = create_app(settings).test_client()
    report = client.get("/healthz", headers=AUTH).get_json()
    assert report["programs"][FRIENDS] == {"deliveries_pending": 0, "deliveries_failed": 3,
                                           "oldest_pending_age_seconds": None, "crm_backlog": 1, "crm_refused": 1}
    assert report["programs"][AFFILIATE]["deliveries_failed"] == 0
    assert report["attention"][0].startswith("friends: 3 deliveries failed")
    public = client.get("/healthz").get_json()
    assert "programs" not in public and FRIENDS not in json.dumps(public)  # says nothing of which exist


# -- ledger and requeue-failed --------------------------------------------------------------------


def test_ledger_shows_each_programs_statement_apart(settings, fake, redis_conn):
    seed(settings)
    env = cli_env(settings, fake)
    both = run(env, "ledger", "p1")
    assert both.exit_code == 0, both.output
    headings = [line for line in both.output.splitlines() if line.startswith("Commission ledger")]
    assert headings == ["Commission ledger of partner p1 in program affiliate: 1 entries",
                        "Commission ledger of partner p1 in program friends: 1 entries"]
    affiliate, friends = both.output.split("\n\nCommission ledger of partner p1 in program friends")
    assert re.search(r"^USD +10 +0 +0 +0 +10 +sent to Salesforce$", affiliate, re.M)
    assert "EUR" not in affiliate and "USD" not in friends  # never one total across programs
    assert re.search(r"^EUR +7.5 +0 +0 +0 +7.5 +sent to Salesforce$", friends, re.M)
    assert "Program currency: EUR (PARTNERO_FRIENDS_CURRENCY)." in friends

    one = run(env, "ledger", "p1", "--program", FRIENDS)
    assert one.output.startswith("Commission ledger of partner p1 in program friends: 1 entries")
    assert "affiliate" not in one.output

    data = json.loads(run(env, "ledger", "p1", "--json").output)
    assert list(data["programs"]) == [AFFILIATE, FRIENDS]
    assert [t["owed"] for t in data["programs"][FRIENDS]["totals"]] == ["7.5"]
    narrowed = json.loads(run(env, "ledger", "p1", "--json", "--program", AFFILIATE).output)
    assert (narrowed["program"], [t["owed"] for t in narrowed["totals"]]) == (AFFILIATE, ["10"])

    missing = CliRunner().invoke(main, ["ledger", "p2", "--program", AFFILIATE], env=env)
    assert missing.exit_code == 1 and "no ledger entries for partner 'p2' in program affiliate" in missing.stderr
    unknown = CliRunner().invoke(main, ["ledger", "p1", "--program", "nobody"], env=env)
    assert unknown.exit_code == 2
    assert "there is no program 'nobody': PARTNERO_PROGRAMS names affiliate, friends" in unknown.output


def test_requeue_failed_takes_a_program(settings, fake, redis_conn):
    seeded = seed(settings)
    inbox = Inbox(db.engine_for(settings.database_url))
    other = Delivery(json.dumps(sample_delivery("partner.created", id="p5")).encode(), "partner.created",
                     DeliveryStatus.PENDING, "p5", AFFILIATE)
    [affiliate_failed] = [s.id for s in inbox.store_many([other]).values()]
    inbox.claim()
    inbox.mark_failures({affiliate_failed: "partner.yml: approved: a text is not true or false"})
    env = cli_env(settings, fake)

    dry = run(env, "requeue-failed", "--program", AFFILIATE, "--dry-run")
    assert dry.output == "would requeue 1 failed deliveries of program affiliate (dry run: nothing changed)\n"
    result = run(env, "requeue-failed", "--program", AFFILIATE)
    assert result.exit_code == 0
    assert "requeued 1 failed deliveries of program affiliate, a worker woken" in result.output
    assert inbox.count(status=DeliveryStatus.PENDING, program=AFFILIATE) == 1
    assert inbox.count(status=DeliveryStatus.FAILED, program=FRIENDS) == len(seeded.failed)  # left alone
    assert "requeued 3 failed deliveries, a worker woken" in run(env, "requeue-failed").output
    assert inbox.count(status=DeliveryStatus.FAILED) == 0


def test_one_named_program_is_shown_as_one_program(settings, fake, redis_conn):
    """PARTNERO_PROGRAMS naming one program: no line per program and no name before the trouble,
    as without PARTNERO_PROGRAMS, but the currency's variable is the program's."""
    engine = db.engine_for(settings.database_url)
    reward = Reward("p1#1", "p1", Decimal("10"), "USD", "ok", AT)
    with engine.begin() as conn:
        ledger.settle_many(conn, [ledger.Settlement("t1", (reward,), False, AT, None, None)], AT, program=AFFILIATE)
    inbox = Inbox(engine)
    stored = inbox.store_many([Delivery(b'{"event": "partner.created"}', "partner.created", DeliveryStatus.PENDING,
                                        program=AFFILIATE)])
    inbox.claim()
    inbox.mark_failures({s.id: "partner.yml: identity: data.id is empty in this delivery" for s in stored.values()})
    env = cli_env(settings, fake) | {"PARTNERO_PROGRAMS": AFFILIATE, "PARTNERO_FRIENDS_CURRENCY": "",
                                     "PARTNERO_AFFILIATE_CURRENCY": "USD"}
    result = run(env, "status")
    assert result.exit_code == 1
    assert "Programs" not in result.output.splitlines()
    assert re.search(r"^  program currency +USD \(PARTNERO_AFFILIATE_CURRENCY\)$", result.output, re.M)
    assert re.search(r"^  - 1 deliveries failed: see `partnero-sync status` and /ops, ", result.output, re.M)
    report = json.loads(run(env, "status", "--json").output)
    assert list(report["programs"]) == [AFFILIATE]
    assert report["programs"][AFFILIATE]["ledger"] == report["ledger"]
    assert report["ledger"]["program_currency"] == "USD"


def test_deliveries_of_a_program_no_longer_served_are_told(settings, fake, redis_conn):
    """Rows of a program PARTNERO_PROGRAMS no longer names stay pending (no worker claims them):
    status says so, and their story in /ops says why no mapping applies them."""
    seed(settings)
    inbox = Inbox(db.engine_for(settings.database_url))
    stored = inbox.store_many([Delivery(json.dumps(sample_delivery("partner.created", id="p7")).encode(),
                                        "partner.created", DeliveryStatus.PENDING, "p7", "retired")])
    [event_id] = [s.id for s in stored.values()]
    report = json.loads(run(cli_env(settings, fake), "status", "--json").output)
    assert report["inbox"]["by_status"]["pending"] == 1 and "retired" not in report["programs"]
    assert ("1 deliveries of programs this deployment no longer serves wait: name the programs in "
            "PARTNERO_PROGRAMS again to apply them") in report["attention"]
    page = _get(create_app(settings).test_client(), f"/ops/deliveries/{event_id}")
    assert page.text("program") == "retired"
    assert "this deployment no longer serves program retired" in page.html
