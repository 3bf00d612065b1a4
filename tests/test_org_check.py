"""The worker's check of the Salesforce org (``crm check``'s, ``sync.salesforce.org``): run when it
starts and when its mappings differ from the stored check's, stored in ``org_checks``, shown by
status, /healthz, /metrics and /ops before the first call is refused; never stopping the warehouse."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from sync.partnero.samples import sample_delivery
from sync.salesforce.org import RECHECK_AFTER, signature
from sync.services import Services
from sync.store import db, schema
from sync.store.inbox import Delivery, DeliveryStatus
from sync.store.org_checks import OrgChecks, Verdict
from sync.worker.process import build_worker
from tests.conftest import MAPPINGS, salesforce_env
from tests.ops_helpers import AUTH, OPS
from tests.salesforce_orgs import set_up
from tests.test_cli_ops import env_for, run
from tests.test_crm_check import CUSTOM, fresh  # noqa: F401 - fresh: the fixture of a fresh org
from tests.test_salesforce_sync import partner, password_login


class Clock:
    """A clock the test moves."""

    def __init__(self):
        self.now = datetime(2026, 3, 14, 10, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def crm(settings, fake, **changes):
    return settings.with_overrides(salesforce=password_login(fake), dashboard=OPS, **changes)


def start_worker(settings, redis_conn, *documents, clock=None) -> Services:
    """Deliveries stored and a worker woken, then a burst worker started (it checks the org at its
    start, as ``partnero-sync worker`` does) that runs every job and stops; returns its services."""
    services = Services.build(settings, redis_conn)
    bodies = [json.dumps(d).encode() for d in documents]
    if bodies:
        services.inbox.store_many([Delivery(b, json.loads(b)["event"], DeliveryStatus.PENDING) for b in bodies])
        services.queue.wake()
    worker_services = Services.build(settings, redis_conn, **({"clock": clock} if clock else {}))
    build_worker(worker_services).work(burst=True)
    return worker_services


def latest(settings):
    return OrgChecks(db.engine_for(settings.database_url)).latest()


def test_a_worker_started_against_a_fresh_org_records_the_misfit_before_a_call_is_refused(
        settings, fresh, redis_conn, client_for):
    settings = crm(settings, fresh)
    services = start_worker(settings, redis_conn, partner(), sample_delivery("customer.created"))
    kinds = [call.kind for call in fresh.calls]
    assert kinds.count("describe") == 3 and "collections" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "describe") < kinds.index("collections")
    check = latest(settings)
    assert check.verdict is Verdict.MISFIT and {(f["object"], f["field"]) for f in check.findings} == CUSTOM
    assert all(set(f) == {"object", "field", "problem", "detail", "fix", "source"} for f in check.findings)
    # The warehouse filled all the same, and Salesforce's refusals are recorded per record as before.
    assert services.inbox.summary().counts[DeliveryStatus.PROCESSED] == 2

    env = {**env_for(settings), **salesforce_env(fresh)}
    result = run("status", env=env)
    assert result.exit_code == 1
    assert "the Salesforce org does not fit the mappings: 20 problems (Contact.Partnero_Partner_Id__c: field " \
           "missing;" in result.output
    assert "does not fit the mappings: 20 problems; checked" in result.output
    status = json.loads(run("status", "--json", env=env).output)
    assert status["salesforce"]["org_check"]["verdict"] == "does not fit"
    assert len(status["salesforce"]["org_check"]["findings"]) == 20
    assert any("does not fit the mappings: 20 problems" in reason for reason in status["attention"])

    client = client_for(settings)
    health = client.get("/healthz", headers=AUTH).get_json()
    assert health["salesforce_org"]["verdict"] == "does not fit" and health["salesforce_org"]["problems"] == 20
    assert any("does not fit the mappings" in reason for reason in health["attention"])
    metrics = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert "partnero_sync_salesforce_org_misfits 20.0" in metrics
    assert "partnero_sync_salesforce_org_check_known 1.0" in metrics
    page = client.get("/ops/", headers=AUTH).get_data(as_text=True)
    assert 'id="crm-org"' in page and "20 problems" in page and "does not fit the mappings" in page


def test_once_the_org_is_set_up_the_next_start_clears_the_misfit(settings, fresh, redis_conn, client_for):
    settings = crm(settings, fresh)
    services = start_worker(settings, redis_conn, partner())
    assert latest(settings).verdict is Verdict.MISFIT
    set_up(fresh)
    describes = fresh.count("describe")
    services.housekeeping()  # the same worker: it checked at its start, and the mappings are the same
    assert fresh.count("describe") == describes and latest(settings).verdict is Verdict.MISFIT

    start_worker(settings, redis_conn)  # a restart
    check = latest(settings)
    assert (check.verdict, check.findings) == (Verdict.FITS, ())
    client = client_for(settings)
    assert not any("org" in reason for reason in client.get("/healthz", headers=AUTH).get_json()["attention"])
    assert "partnero_sync_salesforce_org_misfits 0.0" in client.get("/metrics", headers=AUTH).get_data(as_text=True)


def test_a_misfit_fixed_in_setup_clears_by_itself(settings, fresh, redis_conn):
    settings = crm(settings, fresh)
    clock = Clock()
    services = start_worker(settings, redis_conn, clock=clock)
    assert latest(settings).verdict is Verdict.MISFIT
    set_up(fresh)
    clock.now += RECHECK_AFTER - timedelta(seconds=1)
    services.housekeeping()
    assert latest(settings).verdict is Verdict.MISFIT  # not yet
    clock.now += timedelta(seconds=1)
    services.housekeeping()
    assert latest(settings).verdict is Verdict.FITS
    describes = fresh.count("describe")
    clock.now += RECHECK_AFTER
    services.housekeeping()
    assert fresh.count("describe") == describes  # an org that fits is checked again at the next start


def test_a_mapping_change_is_checked_by_the_worker_that_has_it(settings, fresh, redis_conn, tmp_path):
    settings = crm(settings, set_up(fresh))
    old = start_worker(settings, redis_conn)
    assert latest(settings).verdict is Verdict.FITS
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    path = mappings / "partner.yml"
    text = path.read_text()
    assert "    Partnero_Status__c:" in text
    tier = "    Partnero_Tier__c: data.status\n"
    path.write_text(text.replace("    Partnero_Status__c:", tier + "    Partnero_Status__c:"))
    start_worker(settings.with_overrides(mappings_dir=mappings), redis_conn)
    check = latest(settings)
    assert check.verdict is Verdict.MISFIT and check.mapping_signature != signature(old.mappings)
    assert [(f["object"], f["field"], f["problem"]) for f in check.findings] == [
        ("Contact", "Partnero_Tier__c", "field missing")]


def test_salesforce_away_at_start_is_cannot_tell_and_tried_again_later(settings, fresh, redis_conn, client_for):
    settings = crm(settings, fresh)
    fresh.outage = "503"
    clock = Clock()
    services = start_worker(settings, redis_conn, partner(), clock=clock)
    check = latest(settings)
    assert check.verdict is Verdict.CANNOT_TELL and check.reason and check.findings == ()
    assert services.inbox.summary().counts[DeliveryStatus.PROCESSED] == 1  # the warehouse goes on
    client = client_for(settings)
    assert not any("org" in reason for reason in client.get("/healthz", headers=AUTH).get_json()["attention"])
    metrics = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert "partnero_sync_salesforce_org_check_known 0.0" in metrics
    assert "partnero_sync_salesforce_org_misfits 0.0" in metrics

    fresh.outage = None
    services.check_org()
    assert latest(settings).verdict is Verdict.CANNOT_TELL  # not yet: it waits RECHECK_AFTER
    clock.now += RECHECK_AFTER
    assert services.check_org().verdict is Verdict.MISFIT


def test_with_salesforce_off_nothing_is_checked(settings, redis_conn):
    services = Services.build(settings, redis_conn)
    services.housekeeping()
    assert services.check_org() is None and latest(settings) is None


def test_migration_0011_adds_and_drops_the_table(tmp_path):
    engine = db.engine_for(f"sqlite:///{tmp_path / 'm.db'}")
    schema.migrate(engine)
    assert "org_checks" in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        command.downgrade(schema._config(conn), "0010")
        conn.commit()
    assert "org_checks" not in sa.inspect(engine).get_table_names()


@pytest.fixture
def client_for():
    from app import create_app

    return lambda settings: create_app(settings).test_client()
