"""The Salesforce API budget: the org's usage read from every answer, flushes paused at
SALESFORCE_API_BUDGET (records wait, no failure), resumed by themselves when usage falls, and
``crm-flush --force`` going ahead. Through simple-salesforce against the HTTPS stand-in, with real
Redis and RQ."""

from __future__ import annotations

import collections
import re

import pytest
from click.testing import CliRunner
from rq.registry import ScheduledJobRegistry

from app import create_app
from sync.cli import main
from sync.core.errors import ConfigurationError
from sync.ops.status import render
from sync.ops.snapshot import Health, take
from sync.partnero.samples import CUSTOMER, TRANSACTION
from sync.salesforce import schedule
from sync.salesforce.client import SalesforceClient, call_kind, parse_limit_info
from sync.settings import ApiBudget, Settings
from sync.worker.queues import CRM_QUEUE_NAME
from tests.conftest import salesforce_env
from tests.ops_helpers import AUTH, OPS
from tests.test_metrics import parse
from tests.test_salesforce_sync import deliver, outbox_rows, partner, password_login
from tests.warehouse_helpers import envelope

THREE_OBJECTS = (partner(), envelope("customer.created", "2026-03-14T10:02:54Z", **CUSTOMER),
                 envelope("transaction.created", "2026-03-14T10:15:31Z", **TRANSACTION))


@pytest.fixture
def app(settings, fake, redis_conn):
    """Salesforce on, with a budget of half the org's allowance of 100 requests a day."""
    fake.api_max = 100
    return create_app(settings.with_overrides(salesforce=password_login(fake), dashboard=OPS,
                                              salesforce_api_budget=ApiBudget(percent=50)))


@pytest.fixture
def services(app):
    return app.extensions["partnero"]


def statuses(services) -> dict[str, str]:
    return {obj: row["status"] for (obj, _), row in outbox_rows(services).items()}


def scheduled_flushes(redis_conn) -> int:
    return len(ScheduledJobRegistry(CRM_QUEUE_NAME, connection=redis_conn).get_job_ids())


def test_the_orgs_usage_is_read_from_every_answer_and_kept_in_redis(services, fake):
    fake.api_remaining = 90  # 10 used by others today
    deliver(services, partner())
    outcome = services.flush_schedule.run_job()
    assert outcome.report.synced == 1
    client = services.flusher().client
    assert (client.usage.used, client.usage.allowance) == (11, 100)  # the upsert was the 11th
    stored = services.flush_schedule.usage()
    assert {k: stored[k] for k in ("used", "allowance", "budget")} == {"used": 11, "allowance": 100, "budget": 50}
    assert services.flush_schedule.paused() is None
    # GET limits: one call, and the answer's own header agrees with its body.
    assert (client.read_limits().used, client.usage.allowance) == (12, 100)
    assert fake.count("limits") == 1


def test_the_limit_info_header_is_read_whatever_follows_it():
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    # The REST API Developer Guide's examples (Limit Info Header).
    assert parse_limit_info("api-usage=18/5000", now).used == 18
    both = parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)", now)
    assert (both.used, both.allowance) == (25, 5000)
    assert parse_limit_info("api-usage=110018/100000; api-bursts=1/750", now).used == 110018
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)", now) is None
    assert parse_limit_info(None, now) is None


def test_a_flush_pauses_at_the_budget_and_the_records_wait(app, services, fake, redis_conn):
    fake.api_remaining = 51  # 49 used: the first call reaches the budget of 50
    deliver(services, *THREE_OBJECTS)
    outcome = services.flush_schedule.run_job()
    assert outcome.report.calls == 1 and outcome.report.synced == 1
    assert "paused at the Salesforce API budget" in outcome.text and "records wait" in outcome.text
    assert statuses(services) == {"Contact": "synced", "Account": "pending", "Partnero_Transaction__c": "pending"}
    assert fake.count("collections") == 1  # no call past the budget
    paused = services.flush_schedule.paused()
    assert {k: paused[k] for k in ("used", "allowance", "budget")} == {"used": 50, "allowance": 100, "budget": 50}
    # Not a failure: no backoff, no problem, and the next look is scheduled.
    assert not redis_conn.exists(schedule.FAILURES) and services.flush_schedule.problem() is None
    assert scheduled_flushes(redis_conn) == 1

    snapshot = take(services)
    assert snapshot.crm_paused == paused and snapshot.attention() == [] and snapshot.state is Health.OK
    text = render(snapshot, services.settings.salesforce.describe())
    assert re.search(r"^  API usage +50 of 100 daily requests, budget 50 \(SALESFORCE_API_BUDGET\)", text, re.M)
    assert re.search(r"^  flushes +paused at the API budget since .*: the records wait", text, re.M)
    assert "All well: nothing needs attention." in text

    client = app.test_client()
    health = client.get("/healthz", headers=AUTH).get_json()
    assert health["salesforce_api"]["flushes"] == "paused" and health["salesforce_api"]["used"] == 50
    assert health["attention"] == [] and "salesforce_problem" not in health
    found = parse(client.get("/metrics", headers=AUTH).get_data(as_text=True))
    assert found["partnero_sync_salesforce_flushes_paused"] == {(): 1}
    assert found["partnero_sync_salesforce_api_used"] == {(): 50}
    assert found["partnero_sync_salesforce_api_allowance"] == {(): 100}
    assert found["partnero_sync_salesforce_api_budget"] == {(): 50}
    page = client.get("/ops/", headers=AUTH).get_data(as_text=True)
    assert 'id="crm-paused"' in page and "50 / 100" in page


def test_paused_flushes_resume_by_themselves_when_usage_falls(services, fake, redis_conn):
    fake.api_remaining = 51
    deliver(services, *THREE_OBJECTS)
    services.flush_schedule.run_job()
    assert services.flush_schedule.paused() is not None

    # A flush asked for meanwhile (a new delivery) spends no call: the next look is scheduled.
    outcome = services.flush_schedule.run_job()
    assert outcome.report.calls == 0 and fake.count("limits") == 0 and fake.count("collections") == 1

    redis_conn.delete(schedule.PROBED)  # the probe interval has passed; usage has not fallen
    outcome = services.flush_schedule.run_job()
    assert fake.count("limits") == 1 and fake.count("collections") == 1
    assert "paused" in outcome.text and services.flush_schedule.paused() is not None

    fake.outage = "503"  # a probe that cannot reach Salesforce: its backoff, and the retry looks again
    redis_conn.delete(schedule.PROBED)
    outcome = services.flush_schedule.run_job()
    assert "could not flush" in outcome.text and not redis_conn.exists(schedule.PROBED)
    fake.outage = None

    fake.api_remaining = 100  # the rolling 24 hours moved on
    outcome = services.flush_schedule.run_job()
    assert fake.count("limits", status=200) == 2  # the probe's one call, then the flush
    assert outcome.report.synced == 2
    assert set(statuses(services).values()) == {"synced"}
    assert services.flush_schedule.paused() is None
    assert take(services).crm_paused is None


def test_the_orgs_limit_reached_is_a_pause_not_a_failure(services, fake, redis_conn):
    fake.api_remaining = 0  # other integrations used it all: Salesforce answers 403 REQUEST_LIMIT_EXCEEDED
    deliver(services, partner())
    outcome = services.flush_schedule.run_job()
    assert "paused at the Salesforce API budget" in outcome.text
    assert services.flush_schedule.paused()["used"] == 100
    assert not redis_conn.exists(schedule.FAILURES) and services.flush_schedule.problem() is None
    assert statuses(services) == {"Contact": "pending"}


def test_crm_flush_says_it_is_paused_and_force_goes_ahead(services, fake, settings):
    fake.api_remaining = 51
    deliver(services, *THREE_OBJECTS)
    services.flush_schedule.run_job()
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "MAPPINGS_DIR": str(settings.mappings_dir), "SALESFORCE_API_BUDGET": "50%", **salesforce_env(fake)}

    plain = CliRunner().invoke(main, ["crm-flush"], env=env)
    assert plain.exit_code == 0, plain.output  # a pause is not an error
    assert "flushes are paused: the org has used 50 of its 100 daily API requests" in plain.output
    assert fake.count("collections") == 1  # nothing sent

    forced = CliRunner().invoke(main, ["crm-flush", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert "2 synced" in forced.output and "paused" not in forced.output
    assert set(statuses(services).values()) == {"synced"}
    assert services.flush_schedule.paused() is not None  # the workers stay paused


def test_status_json_shows_the_pause_as_a_state(services, fake, settings):
    fake.api_remaining = 51
    deliver(services, *THREE_OBJECTS)
    services.flush_schedule.run_job()
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "MAPPINGS_DIR": str(settings.mappings_dir), "SALESFORCE_API_BUDGET": "50%", **salesforce_env(fake)}
    import json

    answer = CliRunner().invoke(main, ["status", "--json"], env=env)
    body = json.loads(answer.output)
    assert body["state"] == "ok" and body["attention"] == []
    assert body["salesforce"]["paused"]["budget"] == 50
    assert body["salesforce"]["api_usage"]["used"] == 50


@pytest.mark.parametrize("raw", ["lots", "0%", "101%", "-5", "0", "50 %%", "1.5"])
def test_a_bad_budget_stops_start_up_with_a_sentence_naming_it(raw, settings):
    with pytest.raises(ConfigurationError, match="SALESFORCE_API_BUDGET must be a share"):
        Settings.from_env({"SALESFORCE_API_BUDGET": raw})
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "SALESFORCE_API_BUDGET": raw}
    answer = CliRunner().invoke(main, ["status"], env=env)
    assert answer.exit_code == 2 and "SALESFORCE_API_BUDGET must be a share" in answer.output


def test_the_budget_is_a_share_or_a_number_of_calls_and_leaves_a_fifth_by_default():
    assert Settings.from_env({}).salesforce_api_budget.limit(15000) == 12000
    assert Settings.from_env({"SALESFORCE_API_BUDGET": "50%"}).salesforce_api_budget.limit(15000) == 7500
    assert Settings.from_env({"SALESFORCE_API_BUDGET": " 40000 "}).salesforce_api_budget.limit(100000) == 40000


def test_every_call_is_counted_once_by_kind(app, services, fake):
    other = SalesforceClient(services.settings.salesforce)  # another client: its own session
    other.describe("Contact")
    other.read_metadata("CustomObject", ["Partnero_Transaction__c"])  # the Metadata API's SOAP transport
    deliver(services, partner())
    services.flush_schedule.run_job()
    services.flusher().client.read_limits()
    found = parse(app.test_client().get("/metrics", headers=AUTH).get_data(as_text=True))
    counted = found["partnero_sync_salesforce_calls_total"]  # (kind, object)
    assert counted == {("login", ""): 2, ("describe", "Contact"): 1, ("metadata", ""): 1, ("upsert", "Contact"): 1,
                       ("limits", ""): 1}
    # The stand-in's own count of what it answered, kind for kind: nothing twice, nothing missed.
    answered = collections.Counter(call.kind for call in fake.calls)
    assert answered == {"login": 2, "describe": 1, "metadata": 1, "collections": 1, "limits": 1}


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("PATCH", "composite/sobjects/Contact/Ext__c", ("Contact", "upsert")),
    ("DELETE", "sobjects/Contact/Ext__c/a%2Fb", ("Contact", "delete")),
    ("GET", "sobjects/Contact/describe", ("Contact", "describe")),
    ("GET", "query/?q=SELECT+Id+FROM+User", ("", "query")),
    ("POST", "jobs/ingest/", ("", "bulk_create")),
    ("PUT", "jobs/ingest/750R0000000z/batches", ("", "bulk_upload")),
    ("PATCH", "jobs/ingest/750R0000000z/", ("", "bulk_close")),
    ("GET", "jobs/ingest/750R0000000z/", ("", "bulk_status")),
    ("GET", "jobs/ingest/750R0000000z/failedResults/", ("", "bulk_results")),
])
def test_a_call_is_named_by_its_path(method, path, expected):
    assert call_kind(method, f"https://example.my.salesforce.com/services/data/v59.0/{path}") == expected
