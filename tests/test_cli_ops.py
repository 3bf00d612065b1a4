"""The operator's commands (status, requeue-failed, prune) and how every command fails, run
through click and as real processes against real databases and Redis."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from rq import Queue

from sync.cli import main
from sync.cli.base import parse_duration
from sync.ops.snapshot import STUCK_AFTER
from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.store import db
from sync.store.inbox import PRUNED_BODY, Delivery, DeliveryStatus, Inbox, Pruned, webhook_events
from sync.worker.process import build_worker
from sync.worker.queues import QUEUE_NAME, JobQueue, PartneroWorker
from tests.conftest import DEAD_PG_URL, DEAD_REDIS_URL, MAPPINGS, ROOT, signed, wakeups


def run(*args: str, env: dict[str, str]):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def env_for(settings, **changes: str) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "MAPPINGS_DIR": str(settings.mappings_dir), **changes}


def store(settings, *bodies: bytes | dict, enqueue_to=None) -> list[int]:
    """Store deliveries as the receiver does (optionally enqueueing them); returns their row ids."""
    inbox = Inbox(db.engine_for(settings.database_url))
    deliveries = []
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        deliveries.append(Delivery(raw, json.loads(raw)["event"], DeliveryStatus.PENDING))
    stored = inbox.store_many(deliveries)
    ids = [stored[d.fingerprint].id for d in deliveries]
    if enqueue_to is not None:
        JobQueue(enqueue_to).wake()
    return ids


def rows(settings, ids) -> dict[int, dict]:
    t = webhook_events
    with db.engine_for(settings.database_url).connect() as conn:
        found = conn.execute(sa.select(t).where(t.c.id.in_(list(ids)))).all()
    return {r.id: dict(r._mapping) for r in found}


def backdate(settings, ids, age: timedelta) -> None:
    """Make rows look received ``age`` ago."""
    t = webhook_events
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(t.update().where(t.c.id.in_(list(ids))).values(received_at=datetime.now(timezone.utc) - age))


def work(settings, redis_conn) -> None:
    """Run a real worker until the queue is empty."""
    build_worker(Services.build(settings, redis_conn), worker_class=PartneroWorker).work(burst=True)


def failed_registry(redis_conn):
    return Queue(QUEUE_NAME, connection=redis_conn).failed_job_registry


#: A delivery the worker cannot process: its "data" is not an object.
def malformed(event: str, n: int) -> dict:
    return {"event": event, "data": f"not an object #{n}"}


def fixable(event: str, n: int) -> dict:
    """A delivery the shipped mappings apply: stored as failed (``failed_earlier``), it stands for
    one whose cause was fixed since."""
    kind = event.split(".")[0]
    return sample_delivery(event, **({"id": f"ptn_{n}"} if kind == "partner" else {"key": f"{kind}_{n}"}))


def failed_earlier(settings, ids) -> None:
    Inbox(db.engine_for(settings.database_url)).mark_failures({i: "an earlier failure" for i in ids})


@pytest.fixture
def broken_mappings(tmp_path):
    """The shipped mappings with a partner column that fails every partner delivery (an email is
    not true or false), and every column's type as it was (so the database needs no change)."""
    directory = tmp_path / "broken-mappings"
    shutil.copytree(MAPPINGS, directory)
    partner = directory / "partner.yml"
    text = partner.read_text()
    good = "approved: {from: data.approved, type: boolean}"
    assert good in text
    partner.write_text(text.replace(good, "approved: {from: data.email, type: boolean}"))
    return directory


# -- status ---------------------------------------------------------------------------------


def test_status_when_all_is_well_exits_0_with_a_table(settings, redis_conn):
    store(settings, sample_delivery("partner.created"), sample_delivery("reward.paid"), enqueue_to=redis_conn)
    work(settings, redis_conn)
    result = run("status", env=env_for(settings))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    found = _table(lines)
    assert len({column for column, _, _ in found}) == 1  # aligned: every value starts in one column
    table = {label: value for _, label, value in found}
    assert table["pending"] == "0" and table["processed"] == "1" and table["ignored"] == "1"
    assert table["failed"] == "0" and table["failed jobs"] == "0" and table["wake-ups waiting"] == "0"
    assert table["oldest pending"] == "nothing pending"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", table["last processed"])
    assert table["Salesforce"].startswith("off")
    assert lines[-1] == "All well: nothing needs attention."


def _table(lines: list[str]) -> list[tuple[int, str, str]]:
    """(column of the value, label, value) for the table's rows that have a value."""
    found = (re.fullmatch(r"\s*(\S.*?)\s{2,}(\S.*)", line) for line in lines if not line.lstrip().startswith("- "))
    return [(match.start(2), match[1], match[2]) for match in found if match]


def test_a_failed_delivery_needs_attention(settings, redis_conn):
    [event_id] = store(settings, malformed("partner.created", 1), enqueue_to=redis_conn)
    work(settings, redis_conn)  # the job fails it, for real
    assert rows(settings, [event_id])[event_id]["status"] == DeliveryStatus.FAILED
    result = run("status", env=env_for(settings))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "Needs attention" in lines
    assert any(line.startswith("  - 1 deliveries failed: ") and "requeue-failed" in line for line in lines)
    # The job did its work, so RQ's failed registry has nothing to say about it.
    assert not any("failed registry" in line for line in lines)


def test_status_with_redis_down_cannot_tell(settings):
    result = run("status", env=env_for(settings, REDIS_URL=DEAD_REDIS_URL))
    assert result.exit_code == 2
    assert re.search(r"^Queue +cannot tell: redis unavailable: ", result.output, re.M)
    assert result.output.splitlines()[-1] == "Cannot tell whether all is well: the Redis could not be read."


def test_status_with_the_database_down_cannot_tell(settings):
    result = run("status", env=env_for(settings, DATABASE_URL=DEAD_PG_URL))
    assert result.exit_code == 2
    assert re.search(r"^Inbox +cannot tell: database unavailable: connection failed: ", result.output, re.M)
    assert "Traceback" not in result.output


def test_status_without_a_schema_says_to_migrate(tmp_path, redis_conn, redis_server_url):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/empty.db", "REDIS_URL": redis_server_url, "MAPPINGS_DIR": str(MAPPINGS)}
    result = run("status", env=env)
    assert result.exit_code == 2
    assert "run `partnero-sync migrate`" in result.output


def test_status_json_has_the_documented_keys(settings, redis_conn):
    store(settings, malformed("customer.created", 1), enqueue_to=redis_conn)
    work(settings, redis_conn)
    result = CliRunner().invoke(main, ["status", "--json"], env=env_for(settings))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {"taken_at", "state", "stuck_after_seconds", "inbox", "queue", "salesforce",
                           "ledger", "backfill", "notifications", "programs", "unavailable", "attention", "alerts"}
    # One program, named default: its figures are the whole inbox's, and its trouble unprefixed.
    assert list(report["programs"]) == ["default"]
    assert set(report["programs"]["default"]) == {"inbox", "salesforce", "ledger", "backfill", "notifications",
                                                  "attention"}
    assert report["notifications"] == {"pending": 0, "sent": 0, "failed": 0, "failed_recently": 0}
    assert report["programs"]["default"]["inbox"] == report["inbox"]
    assert report["programs"]["default"]["ledger"] == report["ledger"]
    assert report["state"] == "attention" and report["stuck_after_seconds"] == STUCK_AFTER.total_seconds()
    assert report["inbox"]["by_status"] == {DeliveryStatus.PENDING: 0, DeliveryStatus.PROCESSED: 0, DeliveryStatus.IGNORED: 0, DeliveryStatus.FAILED: 1}
    assert set(report["inbox"]) == {"by_status", "oldest_pending_at", "oldest_pending_age_seconds", "last_processed_at"}
    assert set(report["queue"]) == {"queued", "scheduled", "failed", "started", "workers"}
    assert report["queue"]["failed"] == 0  # the failure is the delivery's, on its row
    assert report["salesforce"] is None and report["unavailable"] == {}
    assert report["ledger"] == {"program_currency": None, "program_currency_from": None, "by_currency": {},
                                "other_currencies": {}}
    assert report["attention"][0].startswith("1 deliveries failed")
    datetime.fromisoformat(report["taken_at"])
    # Every key is documented in --help.
    documented = run("status", "--help", env={}).output
    for key in [*report, *report["inbox"], *report["queue"], "by_object", "backlog", "refused", "last_synced_at",
                *report["ledger"], "transactions", "partners", *report["programs"]["default"]]:
        assert re.search(rf"\b{key}\b", documented), key


def test_status_json_says_what_it_could_not_read(settings):
    result = CliRunner().invoke(main, ["status", "--json"], env=env_for(settings, REDIS_URL=DEAD_REDIS_URL))
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["state"] == "unknown" and report["queue"] is None
    assert report["unavailable"]["redis"].startswith("redis unavailable: ")


def test_a_stuck_backlog_needs_attention(settings, redis_conn):
    [event_id] = store(settings, sample_delivery("partner.created"))  # stored, and no job: nothing works on it
    backdate(settings, [event_id], timedelta(hours=1))
    stuck = run("status", "--stuck-after", "30m", env=env_for(settings))
    assert stuck.exit_code == 1
    assert re.search(r"^  - the oldest pending delivery has waited 60 min: is a worker running\?$", stuck.output, re.M)
    assert re.search(r"^  oldest pending +\S+ \S+ UTC \(60 min ago\)$", stuck.output, re.M)
    patient = run("status", "--stuck-after", "2h", env=env_for(settings))
    assert patient.exit_code == 0, patient.output
    assert json.loads(run("status", "--json", "--stuck-after", "2h", env=env_for(settings)).output)["stuck_after_seconds"] == 7200


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("2w", timedelta(weeks=2)), ("45s", timedelta(seconds=45)), (" 2W ", timedelta(weeks=2)), ("0d", timedelta(0)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["90", "d", "1.5h", "-1d", "10y", "1h30m", ""])
def test_durations_need_a_whole_number_and_a_unit(text):
    with pytest.raises(ValueError, match="is not a duration like 30m, 12h, 90d or 2w"):
        parse_duration(text)


def test_a_bad_duration_is_a_usage_error():
    result = CliRunner().invoke(main, ["status", "--stuck-after", "soon"], env={})
    assert result.exit_code == 2
    assert "Invalid value for '--stuck-after': 'soon' is not a duration like 30m" in result.output


def test_the_stuck_after_default_in_help_is_the_snapshots():
    help_text = " ".join(run("status", "--help", env={}).output.split())
    [default] = re.findall(r"\(default: (\w+)\)", help_text)
    assert parse_duration(default) == STUCK_AFTER


# -- requeue-failed -------------------------------------------------------------------------


def test_requeue_failed_retries_failed_deliveries_after_a_fix(settings, redis_conn, broken_mappings):
    partners = [sample_delivery("partner.created", id=f"ptn_{i}") for i in range(3)]
    ids = store(settings, *partners, sample_delivery("customer.created"), enqueue_to=redis_conn)
    work(settings.with_overrides(mappings_dir=broken_mappings), redis_conn)
    before = rows(settings, ids)
    assert [before[i]["status"] for i in ids] == [DeliveryStatus.FAILED, DeliveryStatus.FAILED, DeliveryStatus.FAILED, DeliveryStatus.PROCESSED]
    assert "approved: a text is not true or false" in before[ids[0]]["last_error"]
    assert failed_registry(redis_conn).count == 0  # the job did its work; the failures are the rows'

    # The fix: the shipped mappings. Requeue, and the worker processes them.
    result = run("requeue-failed", env=env_for(settings))
    assert result.exit_code == 0
    assert "requeued 3 failed deliveries, a worker woken" in result.output
    after = rows(settings, ids[:3])
    assert {r["status"] for r in after.values()} == {DeliveryStatus.PENDING} and {r["attempts"] for r in after.values()} == {0}
    assert all("a text is not true or false" in r["last_error"] for r in after.values())  # kept until a retry succeeds
    assert wakeups(redis_conn) == 1
    assert failed_registry(redis_conn).count == 0

    work(settings, redis_conn)
    done = rows(settings, ids)
    assert {r["status"] for r in done.values()} == {DeliveryStatus.PROCESSED}
    assert {r["last_error"] for r in done.values()} == {None}
    assert run("status", env=env_for(settings)).exit_code == 0


def test_requeue_failed_by_date_and_event_type(settings, redis_conn):
    old_partner, old_customer, new_partner, new_customer = ids = store(
        settings, fixable("partner.created", 1), fixable("customer.created", 2),
        fixable("partner.created", 3), fixable("customer.created", 4),
    )
    failed_earlier(settings, ids)
    backdate(settings, [old_partner, old_customer], timedelta(days=10))
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    redis_conn.flushdb()  # forget the first jobs: only the requeued ones remain to be seen

    recent = run("requeue-failed", "--since", since, env=env_for(settings))
    assert "requeued 2 failed deliveries, a worker woken" in recent.output
    assert wakeups(redis_conn) == 1
    partners = run("requeue-failed", "--event", "partner.created", env=env_for(settings))
    assert "requeued 1 failed deliveries, a worker woken" in partners.output
    assert wakeups(redis_conn) == 1  # one wake-up waits at a time
    statuses = {i: r["status"] for i, r in rows(settings, [old_partner, old_customer, new_partner, new_customer]).items()}
    assert statuses == {old_partner: DeliveryStatus.PENDING, old_customer: DeliveryStatus.FAILED, new_partner: DeliveryStatus.PENDING, new_customer: DeliveryStatus.PENDING}


def test_requeue_failed_dry_run_changes_nothing(settings, redis_conn):
    ids = store(settings, fixable("partner.created", 1), fixable("partner.updated", 2))
    failed_earlier(settings, ids)
    ids += store(settings, malformed("partner.created", 3), enqueue_to=redis_conn)
    work(settings, redis_conn)
    before = rows(settings, ids)
    assert [before[i]["status"] for i in ids] == [DeliveryStatus.FAILED] * 3
    result = CliRunner().invoke(main, ["requeue-failed", "--dry-run"], env=env_for(settings))
    assert result.exit_code == 1  # one still cannot be applied
    assert result.stdout.strip() == "would requeue 2 failed deliveries (dry run: nothing changed)"
    assert result.stderr.splitlines() == ["1 would be skipped: they still cannot be applied:",
                                          f'  inbox #{ids[2]}: delivery has no "data" object']
    assert rows(settings, ids) == before
    assert wakeups(redis_conn) == 0


def test_requeue_failed_with_redis_down_leaves_them_to_the_sweeper(settings, redis_conn):
    ids = store(settings, fixable("partner.created", 1), fixable("customer.created", 2))
    failed_earlier(settings, ids)

    result = CliRunner().invoke(main, ["requeue-failed"], env=env_for(settings, REDIS_URL=DEAD_REDIS_URL))
    assert result.exit_code == 0
    assert "requeued 2 failed deliveries\n" in result.stdout and "woken" not in result.stdout
    assert "Redis could not take the wake-up (could not wake a worker: " in result.stderr
    assert "the worker's sweeper will wake a worker once Redis answers" in result.stderr
    assert {r["status"] for r in rows(settings, ids).values()} == {DeliveryStatus.PENDING}

    # Redis is back: the sweep the worker runs every minute wakes one.
    swept = run("sweep", "--older-than", "0", env=env_for(settings)).output.strip()
    assert swept == "2 pending deliveries waited with nobody on the way; a worker was woken"
    assert wakeups(redis_conn) == 1
    work(settings, redis_conn)
    assert {r["status"] for r in rows(settings, ids).values()} == {DeliveryStatus.PROCESSED}  # the cause was fixed: applied


# -- prune ----------------------------------------------------------------------------------


def test_prune_drops_only_the_bodies_of_old_finished_deliveries(settings, redis_conn):
    processed, ignored, failed, recent = store(
        settings, sample_delivery("partner.created"), sample_delivery("reward.paid"),
        malformed("partner.updated", 1), sample_delivery("customer.created"), enqueue_to=redis_conn,
    )
    work(settings, redis_conn)
    [pending] = store(settings, sample_delivery("transaction.created"))
    old = [processed, ignored, failed, pending]
    backdate(settings, old, timedelta(days=100))
    before = rows(settings, old + [recent])
    assert [before[i]["status"] for i in old + [recent]] == [DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED, DeliveryStatus.FAILED, DeliveryStatus.PENDING, DeliveryStatus.PROCESSED]
    size = len(before[processed]["body"]) + len(before[ignored]["body"])

    dry = run("prune", "--older-than", "90d", "--dry-run", env=env_for(settings))
    assert dry.exit_code == 0
    assert re.fullmatch(rf"would prune 2 deliveries \({size} bytes\) received before \S+ \S+ UTC and the texts of 0 "
                        r"notifications \(dry run: nothing changed\)\n", dry.output)
    assert rows(settings, old + [recent]) == before

    result = run("prune", "--older-than", "90d", env=env_for(settings))
    assert result.exit_code == 0
    assert f"pruned 2 deliveries ({size} bytes) received before " in result.output
    after = rows(settings, old + [recent])
    assert after[processed]["body"] == after[ignored]["body"] == PRUNED_BODY
    for kept in (failed, pending, recent):
        assert after[kept]["body"] == before[kept]["body"]
    for event_id in old + [recent]:  # the rows themselves are untouched
        assert {k: v for k, v in after[event_id].items() if k != "body"} == {
            k: v for k, v in before[event_id].items() if k != "body"}

    again = run("prune", "--older-than", "90d", env=env_for(settings))
    assert "pruned 0 deliveries (0 bytes)" in again.output
    assert rows(settings, old + [recent]) == after


def test_prune_drops_the_texts_of_old_notifications_too(settings):
    """The mappings' messages carry values: prune drops the texts of those sent longer ago,
    keeping each row (so its delivery still never sends it twice)."""
    from sync.mapping import Notice
    from sync.store import notifications

    engine = db.engine_for(settings.database_url)
    old = datetime.now(timezone.utc) - timedelta(days=100)
    with engine.begin() as conn:
        notifications.add(conn, [(7, Notice("big-sale", "SALES_WEBHOOK_URL", "slack", "new sale by ptn_1"))], old)
    [claimed] = notifications.claim(engine, old)
    notifications.sent(engine, claimed.id, old)
    assert "and the texts of 1 notifications (dry run" in run("prune", "--older-than", "90d", "--dry-run",
                                                               env=env_for(settings)).output
    assert "and the texts of 1 notifications" in run("prune", "--older-than", "90d", env=env_for(settings)).output
    with engine.connect() as conn:
        assert conn.execute(sa.select(notifications.notifications.c.text)).scalars().all() == [""]


def test_a_pruned_delivery_sent_again_is_still_a_duplicate(client, settings, redis_conn):
    body, headers = signed(sample_delivery("partner.created"))
    first = client.post("/webhooks/partnero", data=body, headers=headers).get_json()
    work(settings, redis_conn)
    backdate(settings, [first["id"]], timedelta(days=100))
    assert "pruned 1 deliveries" in run("prune", "--older-than", "90d", env=env_for(settings)).output
    again = client.post("/webhooks/partnero", data=body, headers=headers)
    assert again.status_code == 202 and again.get_json() == {"status": "duplicate", "id": first["id"]}


def test_replay_skips_pruned_deliveries_and_says_so(settings, redis_conn):
    ids = store(settings, sample_delivery("partner.created"), sample_delivery("customer.created"),
                sample_delivery("transaction.created"), enqueue_to=redis_conn)
    work(settings, redis_conn)
    backdate(settings, ids[:2], timedelta(days=100))
    run("prune", "--older-than", "90d", env=env_for(settings))
    result = run("replay", env=env_for(settings))
    assert result.exit_code == 0
    assert "replayed 3: 1 processed, 0 ignored, 0 failed, 2 skipped: pruned (their bodies were dropped)" in result.output
    assert {r["status"] for r in rows(settings, ids).values()} == {DeliveryStatus.PROCESSED}


def test_several_prunes_at_once_share_the_work(settings):
    ids = store(settings, *(sample_delivery("partner.updated", id=f"ptn_{i}") for i in range(120)))
    inbox = Inbox(db.engine_for(settings.database_url))
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(webhook_events.update().values(status=DeliveryStatus.PROCESSED))
    backdate(settings, ids, timedelta(days=100))
    expected = inbox.prunable(datetime.now(timezone.utc) - timedelta(days=90))
    assert expected.rows == 120

    totals, errors = [], []

    def prune() -> None:
        try:
            totals.append(sum(inbox.prune(datetime.now(timezone.utc) - timedelta(days=90), batch=7), start=Pruned()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prune) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # Every body pruned exactly once: the runs' counts add up to what there was.
    assert sum(t.rows for t in totals) == 120 and sum(t.bytes for t in totals) == expected.bytes
    assert {r["body"] for r in rows(settings, ids).values()} == {PRUNED_BODY}


# -- every command: help, and one failure each ------------------------------------------------


def _leaf_commands(group=main, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("command", [" ".join(c) for c in _leaf_commands()])
def test_every_command_explains_itself_and_its_exit_status(command):
    result = run(*command.split(), "--help", env={})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "exit status" in text.lower(), f"{command} --help does not say its exit status"
    assert len(re.findall(r"[.:]\s", text)) >= 2, f"{command} --help is one line"


_PASSWORD = "pw-that-must-not-show"
_DEAD_DB = DEAD_PG_URL.replace("postgres@", f"postgres:{_PASSWORD}@")
_SALESFORCE = {"SALESFORCE_INSTANCE_URL": "https://127.0.0.1:1", "SALESFORCE_SESSION_ID": "session-that-must-not-show"}


@pytest.mark.parametrize(("command", "changes", "code", "says"), [
    ("migrate", {}, 1, "database unavailable: connection failed: "),
    ("status", {}, 2, None),
    ("sweep", {}, 1, "database unavailable: connection failed: "),
    ("requeue-failed", {}, 1, "database unavailable: connection failed: "),
    ("prune --older-than 90d", {}, 1, "database unavailable: connection failed: "),
    ("replay", {}, 1, "database unavailable: connection failed: "),
    ("crm-errors", {}, 1, "database unavailable: connection failed: "),
    ("ledger ptn_8c1e6f0a", {}, 1, "database unavailable: connection failed: "),
    ("crm-retry", _SALESFORCE, 1, "database unavailable: connection failed: "),
    ("crm-flush", _SALESFORCE, 1, "database unavailable: connection failed: "),
    ("dev", {"REDIS_URL": DEAD_REDIS_URL}, 1, "database unavailable: connection failed: "),
    # The worker waits for a database that is away (its jobs retry); without Redis it cannot start.
    ("worker", {"REDIS_URL": DEAD_REDIS_URL}, 1, "Redis unavailable: Error 111 connecting to 127.0.0.1:1"),
    ("send-test --url http://user:" + _PASSWORD + "@127.0.0.1:1/webhooks/partnero",
     {"PARTNERO_WEBHOOK_SECRET": "whsec_x"}, 1, "could not reach http://user:***@127.0.0.1:1/"),
    ("mappings check --dir /nonexistent", {}, 1, "mapping directory not found"),
    ("mappings preview README.md --dir /nonexistent", {}, 2, "configuration error: 1 problem in the mapping files"),
])
def test_a_failing_command_says_why_in_one_line(command, changes, code, says, redis_server_url):
    env = {**os.environ, "DATABASE_URL": _DEAD_DB, "REDIS_URL": redis_server_url, "MAPPINGS_DIR": str(MAPPINGS),
           "LOG_LEVEL": "ERROR", **changes}
    done = subprocess.run([sys.executable, "-m", "sync.cli", *command.split()], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert "Traceback" not in output
    assert _PASSWORD not in output and "session-that-must-not-show" not in output
    if says is not None:
        assert says in done.stderr, output
    if says is not None and says.startswith("database unavailable"):
        [line] = done.stderr.splitlines()
        assert line.startswith(f"partnero-sync: {says}")
        assert line.endswith(f"(DATABASE_URL {_DEAD_DB.replace(_PASSWORD, '***')})")


def test_a_missing_schema_says_to_migrate(tmp_path):
    result = CliRunner().invoke(main, ["requeue-failed"], env={"DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                                                                 "MAPPINGS_DIR": str(MAPPINGS)})
    assert result.exit_code == 1
    assert result.stderr.startswith("partnero-sync: the database schema is missing or out of date (")
    assert "run `partnero-sync migrate`" in result.stderr


def test_database_errors_are_explained_without_their_parameters(database_url):
    from sync.cli.base import explain

    engine = db.engine_for(database_url)
    with pytest.raises(sa.exc.SQLAlchemyError) as missing:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table_here"))
    assert db.lagging_schema(missing.value)
    assert explain(missing.value).startswith("the database schema is missing or out of date (")

    with pytest.raises(sa.exc.IntegrityError) as refused:
        with engine.begin() as conn:
            row = {"fingerprint": "value-that-must-not-show".ljust(64, "0"), "event_type": "x", "body": b"{}",
                   "received_at": datetime.now(timezone.utc), "status": DeliveryStatus.PENDING}
            conn.execute(webhook_events.insert(), [row, row])
    message = explain(refused.value)
    assert message.startswith("database error: ") and "unique constraint" in message.lower()
    assert "value-that-must-not-show" not in message
    assert explain(ValueError("a bug")) is None
