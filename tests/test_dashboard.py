"""The RQ dashboard at /rq: never open by default, Basic auth, actions off unless allowed."""

from __future__ import annotations

import base64
import json

import pytest
from rq import Queue

from sync.partnero.samples import sample_delivery
from sync.settings import DashboardSettings, Settings
from sync.worker.queues import QUEUE_NAME
from tests.conftest import drain_jobs, signed

USER, PASSWORD = "operator", "correct-horse-battery"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(USER, PASSWORD)


@pytest.fixture
def dashboard_client(settings, redis_conn):
    return _client(settings.with_overrides(dashboard=DashboardSettings(USER, PASSWORD)))


@pytest.fixture
def actions_client(settings, redis_conn):
    return _client(settings.with_overrides(dashboard=DashboardSettings(USER, PASSWORD, allow_actions=True)))


def _client(settings: Settings):
    from app import create_app

    return create_app(settings).test_client()


def deliver(client, document: dict) -> dict:
    body, headers = signed(document)
    response = client.post("/webhooks/partnero", data=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_without_credentials_configured_the_dashboard_is_not_served(client):
    assert client.get("/rq/").status_code == 404
    assert client.get("/rq/", headers=GOOD).status_code == 404
    assert client.get("/rq/0/data/queues.json", headers=GOOD).status_code == 404


@pytest.mark.parametrize("headers", [
    {},
    basic(USER, "wrong-password-123"),
    basic("someone", PASSWORD),
    {"Authorization": "Basic not-base64!"},
    {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()},  # no user part
], ids=["none", "wrong-password", "wrong-user", "garbage", "other-scheme", "no-colon"])
def test_wrong_or_missing_credentials_are_refused_with_a_challenge(dashboard_client, headers):
    for path in ("/rq/", "/rq/0/data/queues.json", "/rq/static/css/main.css"):
        response = dashboard_client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert PASSWORD not in response.get_data(as_text=True)


def test_the_dashboards_guard_leaves_the_other_routes_alone(dashboard_client):
    # No credentials, no Origin: the webhook and the health check answer as without a dashboard.
    assert deliver(dashboard_client, sample_delivery("partner.created"))["status"] == "queued"
    assert dashboard_client.get("/healthz").status_code == 200
    assert dashboard_client.get("/rq/").status_code == 401

def test_the_right_credentials_show_our_queue_and_jobs(dashboard_client):
    receipt = deliver(dashboard_client, sample_delivery("partner.created"))
    page = dashboard_client.get("/rq/", headers=GOOD)
    assert page.status_code == 200 and b"RQ" in page.data
    queues = dashboard_client.get("/rq/0/data/queues.json", headers=GOOD).get_json()["queues"]
    assert [(q["name"], q["count"]) for q in queues] == [(QUEUE_NAME, 1)]
    jobs = dashboard_client.get(f"/rq/0/data/jobs/{QUEUE_NAME}/queued/8/asc/1.json", headers=GOOD).get_json()
    assert [j["description"] for j in jobs["jobs"]] == ["wake-up: claim and apply pending deliveries"]
    assert receipt["status"] == "queued"
    job_id = jobs["jobs"][0]["id"]
    detail = dashboard_client.get(f"/rq/0/data/job/{job_id}.json", headers=GOOD).get_json()
    assert detail["status"] == "queued" and detail["origin"] == QUEUE_NAME
    for path in ("/rq/0/view/workers", "/rq/0/view/jobs", f"/rq/0/view/job/{job_id}", "/rq/0/data/workers.json"):
        assert dashboard_client.get(path, headers=GOOD).status_code == 200, path


@pytest.mark.usefixtures("whole_drains")
def test_job_descriptions_carry_no_payload_text(dashboard_client, settings, redis_conn):
    from sync.services import Services
    from sync.worker.process import build_worker

    secret_bits = ["maria.secret@example.com", "<script>alert(1)</script>", "Rossi-Private"]
    ids = []
    for n in range(3):
        document = sample_delivery("partner.created")
        document["data"].update(id=f"ptn_{n}", email=secret_bits[0], name=secret_bits[1], surname=secret_bits[2])
        ids.append(deliver(dashboard_client, document)["id"])
    build_worker(Services.build(settings, redis_conn)).work(burst=True)
    [job] = drain_jobs(redis_conn)
    # Once done, a wake-up says which deliveries it applied: event types and inbox rows, no values.
    assert job.description == f"3 deliveries: partner.created x3 (inbox #{min(ids)}..#{max(ids)})"
    assert job.args == () and not job.kwargs
    shown = dashboard_client.get(f"/rq/0/data/jobs/{QUEUE_NAME}/finished/8/asc/1.json", headers=GOOD).get_data(as_text=True)
    assert job.description in shown
    for bit in secret_bits:
        assert bit not in shown and bit not in job.description and bit not in str(job.return_value())


def test_a_job_description_names_only_event_types_that_look_like_one():
    from collections import Counter

    from sync.worker.jobs import describe

    odd = Counter({"<script>alert(1)</script>": 2, "partner.created": 1, "maria@example.com": 1})
    assert describe(odd, 5, 9) == "4 deliveries: (unnamed event) x3, partner.created x1 (inbox #5..#9)"
    assert describe(Counter({"<b>hi</b>": 1}), 7, 7) == "(unnamed event) (inbox #7)"
    assert describe(Counter({"customer.updated": 1}), 7, 7) == "customer.updated (inbox #7)"


def test_actions_are_refused_unless_allowed(dashboard_client, redis_conn):
    deliver(dashboard_client, sample_delivery("partner.created"))
    (job,) = Queue(QUEUE_NAME, connection=redis_conn).get_jobs()
    origin = {"Origin": "http://localhost"}
    for method, path in [("POST", f"/rq/job/{job.id}/delete"), ("POST", f"/rq/job/{job.id}/requeue"),
                         ("POST", f"/rq/queue/{QUEUE_NAME}/queued/empty"), ("GET", f"/rq/requeue/{QUEUE_NAME}"),
                         ("POST", f"/rq/queue/{QUEUE_NAME}/compact")]:
        response = dashboard_client.open(path, method=method, headers={**GOOD, **origin})
        assert response.status_code == 403, path
        assert "RQ_DASHBOARD_ALLOW_ACTIONS" in response.get_json()["error"]
    assert [j.id for j in Queue(QUEUE_NAME, connection=redis_conn).get_jobs()] == [job.id]
    # Unauthenticated, the answer is the challenge, not a hint about actions.
    assert dashboard_client.post(f"/rq/job/{job.id}/delete").status_code == 401


def test_allowed_actions_work_only_from_the_dashboards_own_pages(actions_client, redis_conn):
    deliver(actions_client, sample_delivery("partner.created"))
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    (job,) = queue.get_jobs()
    for foreign in ({}, {"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}):
        response = actions_client.post(f"/rq/job/{job.id}/delete", headers={**GOOD, **foreign})
        assert response.status_code == 403
    assert [j.id for j in queue.get_jobs()] == [job.id]
    response = actions_client.post(f"/rq/job/{job.id}/delete", headers={**GOOD, "Origin": "http://localhost"})
    assert response.status_code == 200 and json.loads(response.data) == {"status": "OK"}
    assert queue.get_jobs() == []


def test_an_unknown_job_is_not_found(dashboard_client):
    page = dashboard_client.get("/rq/0/view/job/no-such-job", headers=GOOD)
    assert page.status_code == 404 and b"no such job" in page.data
    data = dashboard_client.get("/rq/0/data/job/no-such-job.json", headers=GOOD)
    assert data.status_code == 404 and "no such job" in data.get_json()["error"]
    # Without credentials it is still the challenge: nothing says whether a job exists.
    assert dashboard_client.get("/rq/0/view/job/no-such-job").status_code == 401


def fail_with(text: str) -> None:
    """A job for the test below: fails with ``text`` as its error's text."""
    raise ValueError(text)


HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'


def test_the_job_pages_data_is_html_escaped(dashboard_client, redis_conn):
    """The job page inserts description, result, metadata and traceback as HTML: whatever text
    reaches them arrives escaped (the lists escape what they show themselves)."""
    from rq import SimpleWorker

    job = Queue(QUEUE_NAME, connection=redis_conn).enqueue(fail_with, HOSTILE, description=f"odd {HOSTILE}",
                                                           meta={"progress": HOSTILE})
    SimpleWorker([QUEUE_NAME], connection=redis_conn).work(burst=True)
    data = dashboard_client.get(f"/rq/0/data/job/{job.id}.json", headers=GOOD).get_json()
    assert data["status"] == "failed"
    for name in ("description", "exc_info", "metadata"):
        assert "<img" not in data[name] and "&lt;img src=x onerror=" in data[name], name
    listed = dashboard_client.get(f"/rq/0/data/jobs/{QUEUE_NAME}/failed/8/asc/1.json", headers=GOOD).get_json()
    assert HOSTILE in listed["jobs"][0]["exc_info"]  # as it is: the list's template escapes it
