"""Editing mappings over time: check, preview, schema growth, replay, and a bad file at start."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync.cli import main
from sync.core.errors import ConfigurationError
from sync.mapping import MappingError, load_mappings
from sync.partnero.samples import sample_delivery
from sync.store import db
from sync.store.warehouse import Warehouse
from tests.conftest import MAPPINGS, SECRETS
from tests.warehouse_helpers import Pipe

BIN = Path(sys.executable).parent


@pytest.fixture
def mappings_dir(tmp_path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def run(*args: str, env: dict[str, str]):
    return CliRunner().invoke(main, list(args), env=env)


def test_check_reports_ok_for_the_shipped_files():
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(MAPPINGS)})
    assert result.exit_code == 0, result.output
    assert "mappings OK" in result.output
    assert "transaction: 3 events -> table transactions" in result.output


def test_check_lists_every_problem_and_exits_1(mappings_dir):
    path = mappings_dir / "partner.yml"
    path.write_text(path.read_text().replace("transforms: [strip, lower]", "transforms: [strip, lowercase]", 1)
                    .replace("type: boolean", "type: flag", 1))
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(mappings_dir)})
    assert result.exit_code == 1
    assert "2 problems in the mapping files" in result.output
    assert f"{path}:22: warehouse.columns.email.transforms: unknown transform 'lowercase'" in result.output
    assert f"{path}:26: warehouse.columns.approved.type: unknown type 'flag'" in result.output


def test_preview_shows_the_writes_without_writing(tmp_path):
    delivery = tmp_path / "refund.json"
    delivery.write_text(json.dumps(sample_delivery("transaction.deleted", key="in_9", rewards=[])))
    database = tmp_path / "untouched.db"
    result = run("mappings", "preview", str(delivery),
                 env={"MAPPINGS_DIR": str(MAPPINGS), "DATABASE_URL": f"sqlite:///{database}"})
    assert result.exit_code == 0, result.output
    assert "transaction.deleted -> transaction.yml (transaction)" in result.output
    assert "warehouse transactions: tombstone transaction_key = 'in_9'" in result.output
    assert "refunded = True  (kept: set by the delete)" in result.output
    assert "ledger commission_entries: a refund: whatever stands for this transaction is reversed, once" in result.output
    assert not database.exists()


def test_preview_of_a_sale_lists_its_commissions(tmp_path):
    delivery = tmp_path / "sale.json"
    delivery.write_text(json.dumps(sample_delivery("transaction.created")))
    result = run("mappings", "preview", str(delivery), env={"MAPPINGS_DIR": str(MAPPINGS)})
    assert "amount = 149.0" in result.output
    assert "ledger commission_entries: 1 reward(s); when this is the newest state" in result.output
    assert "reward ptn_8c1e6f0a#1: partner ptn_8c1e6f0a amount 44.7 USD status review_period -> pending" in result.output


def test_preview_says_how_each_reward_stands(tmp_path):
    reward = {k: v for k, v in sample_delivery("transaction.created")["data"]["rewards"][0].items() if k != "status"}
    delivery = tmp_path / "points.json"
    delivery.write_text(json.dumps(sample_delivery("transaction.created", is_currency=False, rewards=[reward])))
    result = run("mappings", "preview", str(delivery), env={"MAPPINGS_DIR": str(MAPPINGS)})
    assert ("reward ptn_8c1e6f0a#1: partner ptn_8c1e6f0a amount 44.7 USD status None -> pending "
            "(not money: points or credits)") in result.output


def test_preview_shows_what_another_programs_delivery_would_write(tmp_path):
    delivery = tmp_path / "sale.json"
    delivery.write_text(json.dumps(sample_delivery("transaction.created")))
    default = run("mappings", "preview", str(delivery), env={"MAPPINGS_DIR": str(MAPPINGS)})
    result = run("mappings", "preview", "--program", "affiliate", str(delivery), env={"MAPPINGS_DIR": str(MAPPINGS)})
    assert result.exit_code == 0, result.output
    assert "transaction.created -> transaction.yml (transaction), program affiliate" in result.output
    # The warehouse keeps the identity; Salesforce gets the program's external ids, its lookups too.
    assert "warehouse transactions: upsert transaction_key = 'in_1OxY3b2eZvKYlo2C0aQ1'" in result.output
    assert ("salesforce Partnero_Transaction__c: upsert Partnero_Transaction_Key__c = "
            "'affiliate:in_1OxY3b2eZvKYlo2C0aQ1'") in result.output
    assert "Partnero_Program__c = 'affiliate'" in result.output
    assert 'Partnero_Partner__r = {"Partnero_Partner_Id__c": "affiliate:ptn_8c1e6f0a"}' in result.output
    assert "program default" in default.output and "Partnero_Program__c = 'default'" in default.output
    assert ("salesforce Partnero_Transaction__c: upsert Partnero_Transaction_Key__c = 'in_1OxY3b2eZvKYlo2C0aQ1'"
            in default.output)


#: A deployment of two programs, friends with mappings of its own (``unset``: the variables only
#: the program default reads, which the test process may have).
def programs_env(friends_dir: Path) -> dict:
    unset = dict.fromkeys(("PARTNERO_WEBHOOK_SECRET", "PARTNERO_API_KEY", "PARTNERO_CURRENCY"))
    return {**unset, "PARTNERO_PROGRAMS": "affiliate,friends", "MAPPINGS_DIR": str(MAPPINGS),
            "PARTNERO_FRIENDS_MAPPINGS_DIR": str(friends_dir)}


def test_check_checks_every_programs_mappings(mappings_dir):
    path = mappings_dir / "partner.yml"
    path.write_text(path.read_text().replace("type: boolean", "type: flag", 1))
    result = run("mappings", "check", env=programs_env(mappings_dir))
    assert result.exit_code == 1
    assert f"{path}:26: warehouse.columns.approved.type: unknown type 'flag'" in result.output
    assert f"{MAPPINGS / 'partner.yml'}: partner: 6 events -> table partners" in result.output  # affiliate's
    assert "mappings OK" not in result.output


def test_preview_reads_the_programs_own_mappings(tmp_path, mappings_dir):
    path = mappings_dir / "partner.yml"
    path.write_text(path.read_text().replace("    Partnero_Program__c: program ", "    Brand__c: program ", 1))
    delivery = tmp_path / "partner.json"
    delivery.write_text(json.dumps(sample_delivery("partner.created")))
    friends = run("mappings", "preview", "--program", "friends", str(delivery), env=programs_env(mappings_dir))
    assert friends.exit_code == 0, friends.output
    assert "Brand__c = 'friends'" in friends.output and "Partnero_Program__c" not in friends.output
    affiliate = run("mappings", "preview", "--program", "affiliate", str(delivery), env=programs_env(mappings_dir))
    assert "Partnero_Program__c = 'affiliate'" in affiliate.output and "Brand__c" not in affiliate.output


def test_preview_refuses_a_name_that_is_no_programs(tmp_path):
    delivery = tmp_path / "partner.json"
    delivery.write_text(json.dumps(sample_delivery("partner.created")))
    result = run("mappings", "preview", "--program", "Affiliate", str(delivery), env={"MAPPINGS_DIR": str(MAPPINGS)})
    assert result.exit_code == 2
    assert "a program's name is lower-case letters, digits and dashes (not first or last)" in result.output


def test_check_refuses_a_key_that_gives_no_external_id(mappings_dir):
    path = mappings_dir / "partner.yml"
    text = path.read_text()
    assert "  key: \"program == 'default' && id || join(':', [program, id])\"\n" in text
    path.write_text(text.replace("&& id || join(':', [program, id])", "&& id", 1))
    line = next(n for n, l in enumerate(path.read_text().splitlines(), 1) if l.startswith('  key: "'))
    result = run("mappings", "check", env={"MAPPINGS_DIR": str(mappings_dir)})
    assert result.exit_code == 1
    assert (f"{path}:{line}: salesforce.key: for program 'a-b' and id 'x' it is true/false: an external id is a "
            "text or a whole number") in result.output


def test_a_new_field_adds_its_column_and_keeps_the_data(warehouse_url, mappings_dir):
    pipe = Pipe(warehouse_url)
    pipe.deliver(sample_delivery("partner.created"))
    path = mappings_dir / "partner.yml"
    path.write_text(path.read_text().replace(
        "    status: data.status\n", "    status: data.status\n    referral_key_upper: {from: data.key, transforms: [upper]}\n"
    ))
    grown = Warehouse(load_mappings(mappings_dir))
    engine = db.engine_for(warehouse_url)
    try:
        report = _migrate(grown, engine)
        assert report.added_columns == ["partners.referral_key_upper"]
        assert _migrate(grown, engine).added_columns == []  # again: nothing to do
        with engine.connect() as conn:
            row = grown.read(conn, "partners", "ptn_8c1e6f0a")
        assert row["email"] == "maria@techreviews.io" and row["referral_key_upper"] is None
    finally:
        with engine.begin() as conn:  # leave the shared test database as the other tests expect it
            conn.execute(sa.text("ALTER TABLE partners DROP COLUMN referral_key_upper"))


def test_a_removed_column_is_kept_and_reported(database_url, mappings_dir):
    path = mappings_dir / "customer.yml"
    path.write_text(path.read_text().replace("    last_name: data.surname\n", ""))
    report = _migrate(Warehouse(load_mappings(mappings_dir)), db.engine_for(database_url))
    assert report.unmapped_columns == ["customers.last_name"]
    assert any("customers.last_name is no longer in any mapping: kept" in line for line in report.lines())
    assert "last_name" in {c["name"] for c in sa.inspect(db.engine_for(database_url)).get_columns("customers")}


def test_a_retyped_column_stops_the_migration(database_url, mappings_dir):
    path = mappings_dir / "transaction.yml"
    path.write_text(path.read_text().replace("amount: {from: data.amount, type: decimal}",
                                             "amount: {from: data.amount, type: boolean}"))
    with pytest.raises(ConfigurationError, match="transactions.amount is .* in the database but boolean in transaction.yml"):
        _migrate(Warehouse(load_mappings(mappings_dir)), db.engine_for(database_url))


def test_replay_fills_a_new_column_from_stored_deliveries(tmp_path, mappings_dir, redis_server_url):
    database = f"sqlite:///{tmp_path / 'replay.db'}"
    env = {"DATABASE_URL": database, "MAPPINGS_DIR": str(mappings_dir), "REDIS_URL": redis_server_url}
    assert run("migrate", env=env).exit_code == 0
    pipe = Pipe(database)
    pipe.deliver(sample_delivery("partner.created"), sample_delivery("transaction.created"),
                 sample_delivery("transaction.deleted", key="in_1OxY3b2eZvKYlo2C0aQ1"))
    before = pipe.owed()

    path = mappings_dir / "partner.yml"
    path.write_text(path.read_text().replace(
        "    status: data.status\n", "    status: data.status\n    tos: {from: data.tos, type: boolean}\n"))
    result = run("replay", env=env)
    assert result.exit_code == 0, result.output
    assert "replayed 3: 3 processed, 0 ignored, 0 failed" in result.output
    assert "replaying" in result.output  # the progress bar
    with db.engine_for(database).connect() as conn:
        assert conn.execute(sa.text("SELECT tos FROM partners")).scalar_one() in (1, True)
    # Replaying books nothing twice.
    assert run("replay", "--event", "transaction.created", env=env).exit_code == 0
    after = Pipe(database)
    assert after.owed() == before == {"ptn_8c1e6f0a": Decimal(0)}
    # Booked, then reversed: out of pending, into reversed.
    assert [e[0] for e in after.ledger()] == ["commission", "reversal", "reversal"]


def test_replay_can_pick_a_date_and_an_event(tmp_path, redis_server_url):
    database = f"sqlite:///{tmp_path / 'replay.db'}"
    env = {"DATABASE_URL": database, "MAPPINGS_DIR": str(MAPPINGS), "REDIS_URL": redis_server_url}
    run("migrate", env=env)
    Pipe(database).deliver(sample_delivery("partner.created"), sample_delivery("customer.created"))
    only_customers = run("replay", "--event", "customer.created", env=env)
    assert "replayed 1: 1 processed" in only_customers.output
    future = run("replay", "--since", "2999-01-01", env=env)
    assert "replayed 0" in future.output


def test_a_bad_mapping_stops_the_web_and_the_worker_naming_file_and_field(mappings_dir, tmp_path):
    path = mappings_dir / "customer.yml"
    path.write_text(path.read_text().replace("identity: data.key || data.id", "identity: 'data.[key'"))
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "MAPPINGS_DIR": str(mappings_dir),
        "PARTNERO_WEBHOOK_SECRET": SECRETS[0],
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    expected = f"{path}:6: identity: bad expression 'data.[key'"
    worker = subprocess.run([str(BIN / "partnero-sync"), "worker"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert worker.returncode == 2
    assert expected in worker.stderr
    web = subprocess.run(
        [str(BIN / "gunicorn"), "app:create_app()", "--config", "python:app.server.gunicorn_config", "--bind",
         "127.0.0.1:0"], env=env, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )
    assert web.returncode != 0
    assert expected in web.stderr


def test_the_web_app_refuses_a_bad_mapping(settings, mappings_dir):
    from app import create_app

    (mappings_dir / "customer.yml").write_text("entity: customer\n")
    with pytest.raises(MappingError, match="customer.yml:1: events: missing"):
        create_app(settings.with_overrides(mappings_dir=mappings_dir))


def _migrate(warehouse: Warehouse, engine):
    with engine.begin() as conn:
        return warehouse.migrate(conn)
