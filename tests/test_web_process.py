"""The Procfile's web process as a PaaS runs it: behind a router that terminates TLS and talks
plain HTTP from an address of its own, beside other gunicorn instances on one machine, within
Partnero's five seconds when a commit cannot finish, and deployed in the README's order.

The router is simulated from another loopback address (127.0.0.2), a peer gunicorn does not
trust by default; nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from sync.partnero.samples import sample_delivery
from sync.store import db
from sync.store.inbox import Delivery, webhook_events
from tests.conftest import (
    DEAD_PG_URL,
    DEAD_REDIS_URL,
    SECRETS,
    partnero_env,
    signed,
    wakeups,
)
from tests.ops_helpers import AUTH, Page
from tests.test_processes import BIN, ROOT, environment, free_port, procfile, start, wait_for
from tests.web_helpers import procfile_web

#: Where the simulated router connects from: loopback, but not an address gunicorn trusts by default.
ROUTER = "127.0.0.2"
#: The public name the browser uses; it only ever travels in headers.
HOST = "partnero-sync.example"
HTTPS = {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


def web(directory: Path, redis_url: str, database_url: str | None = None, **variables: str):
    """The Procfile's web process with the dashboard, its actions and ``variables``, on SQLite in
    ``directory`` unless ``database_url`` is given; as a context, yields its port."""
    if database_url is not None:
        variables["DATABASE_URL"] = database_url
    return procfile_web(directory, _answers, REDIS_URL=redis_url, RQ_DASHBOARD_USERNAME="ops",
                        RQ_DASHBOARD_PASSWORD="a-long-password-1", RQ_DASHBOARD_ALLOW_ACTIONS="true", **variables)


def _answers(port: int) -> bool:
    try:
        return call(port, "GET", "/healthz", {"Host": HOST})[0] == 200
    except OSError:
        return False


def call(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
         source: str = ROUTER) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to the web process from ``source`` (the router's address): status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def answer(port: int, body: bytes, headers: dict[str, str]) -> tuple[float, int, http.client.HTTPMessage, dict]:
    """Post a delivery as Partnero does; how long the answer took, its status, headers and JSON."""
    started = time.monotonic()
    status, answer_headers, answer_body = call(port, "POST", "/webhooks/partnero", {**HTTPS, **headers}, body)
    return time.monotonic() - started, status, answer_headers, json.loads(answer_body)


def deliver(port: int) -> int:
    """A signed delivery through the router; its inbox id."""
    _, status, _, stored = answer(port, *signed(sample_delivery("partner.created")))
    assert status == 202, stored
    return stored["id"]


def replay(port: int, event_id: int, headers: dict[str, str],
           source: str = ROUTER) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Open the delivery's page and press its Replay button, as the browser would, with ``headers``."""
    status, _, page = call(port, "GET", f"/ops/deliveries/{event_id}", {**headers, **AUTH}, source=source)
    assert status == 200, page[:300]
    form = urllib.parse.urlencode({"token": Page(page).inputs["token"]}).encode()
    return call(port, "POST", f"/ops/deliveries/{event_id}/replay",
                {**headers, **AUTH, "Content-Type": "application/x-www-form-urlencoded"}, form, source)


def compact(port: int, headers: dict[str, str], source: str = ROUTER) -> tuple[int, bytes]:
    """A dashboard action (compact the delivery queue), as the dashboard's page sends it."""
    status, _, body = call(port, "POST", "/rq/queue/partnero/compact", {**headers, **AUTH}, source=source)
    return status, body


def session_cookie(headers: http.client.HTTPMessage) -> list[str]:
    """The attributes of the session cookie set in a response, lower case."""
    cookies = [c for c in headers.get_all("Set-Cookie") or [] if c.startswith("session=")]
    assert len(cookies) == 1, cookies
    return [part.strip().lower() for part in cookies[0].split(";")[1:]]


def test_behind_a_tls_router_the_buttons_work_and_another_site_is_still_refused(tmp_path, redis_server_url, redis_conn):
    with web(tmp_path / "web", redis_server_url) as port:
        event_id = deliver(port)
        ours = {**HTTPS, "Origin": f"https://{HOST}"}

        status, headers, body = replay(port, event_id, ours)
        assert status == 303, body[:300]
        assert headers["Location"].endswith(f"/ops/deliveries/{event_id}")
        # The message shown after the replay travels in the session cookie: https only.
        assert "secure" in session_cookie(headers)
        assert compact(port, ours)[0] == 200

        for foreign in ({**HTTPS, "Origin": "https://evil.example"},
                        {**HTTPS, "Origin": f"http://{HOST}"},  # the same host over plain http
                        {**HTTPS, "Referer": "https://evil.example/ops"},
                        HTTPS):  # neither Origin nor Referer
            assert replay(port, event_id, foreign)[0] == 403, foreign
            assert compact(port, foreign)[0] == 403, foreign

        # Only the scheme is taken from the router: no header moves the app off the root.
        status, _, body = call(port, "GET", "/healthz", {**HTTPS, "SCRIPT_NAME": "/healthz"})
        assert status == 200, body[:300]


def test_over_plain_http_the_cookie_is_not_secure(tmp_path, redis_server_url, redis_conn):
    # As `honcho start` serves it locally: no router, http all the way; the buttons still work.
    with web(tmp_path / "web", redis_server_url) as port:
        event_id = deliver(port)
        plain = {"Host": HOST, "Origin": f"http://{HOST}"}
        status, headers, body = replay(port, event_id, plain)
        assert status == 303, body[:300]
        assert "secure" not in session_cookie(headers)
        assert compact(port, plain)[0] == 200
        assert replay(port, event_id, {**plain, "Origin": f"https://{HOST}"})[0] == 403


def test_an_untrusted_peer_cannot_claim_https(tmp_path, redis_server_url, redis_conn):
    # Narrowed to the router's network, which 127.0.0.2 is not in: its X-Forwarded-Proto is
    # ignored, so the request is what it is, plain http, and a page served over https is not it.
    with web(tmp_path / "web", redis_server_url, FORWARDED_ALLOW_IPS="10.0.0.0/8,127.0.0.1") as port:
        event_id = deliver(port)
        claimed = {**HTTPS, "Origin": f"https://{HOST}"}
        assert replay(port, event_id, claimed)[0] == 403
        assert compact(port, claimed)[0] == 403
        # From a peer it names, the same request is believed.
        status, headers, body = replay(port, event_id, claimed, source="127.0.0.1")
        assert status == 303, body[:300]
        assert "secure" in session_cookie(headers)
        assert compact(port, claimed, source="127.0.0.1")[0] == 200


def test_a_malformed_forwarded_allow_ips_stops_the_release_and_the_web(tmp_path):
    env = environment(PORT=str(free_port()), DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                      PARTNERO_WEBHOOK_SECRET=SECRETS[0], FORWARDED_ALLOW_IPS="10.0.0.1/8")
    # The release phase, before any web process of the deploy starts: one sentence naming it.
    release = subprocess.run(["/bin/sh", "-c", procfile()["release"]], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert release.returncode == 2, release.stdout + release.stderr
    assert "FORWARDED_ALLOW_IPS" in release.stderr and "Traceback" not in release.stderr
    # gunicorn reads the variable too, before any of our code runs, and refuses to start.
    process = start(procfile()["web"], env, cwd=tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0 and "10.0.0.1/8" in output.decode() and "Traceback" not in output.decode()


def test_two_instances_on_one_machine_leave_each_other_alone(tmp_path, redis_server_url, redis_conn):
    # gunicorn's control socket would default to one path per user, shared by every instance:
    # the second replaces the first one's, and deletes it when it stops. Ours makes none.
    home, runtime = tmp_path / "home", tmp_path / "run"
    runtime.mkdir()
    shared = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    with web(tmp_path / "first", redis_server_url, **shared) as first:
        with web(tmp_path / "second", redis_server_url, **shared) as second:
            assert _answers(first) and _answers(second)
            made = [p for p in (*runtime.rglob("*"), *home.rglob("*")) if p.is_socket() or p.suffix == ".ctl"]
            assert made == []
        assert _answers(first)  # the second one stopping took nothing of the first's


#: Longer than the 3.5 s a delivery's answer may wait for its commit.
SLOW_COMMIT_SECONDS = 4.5


def test_commits_that_cannot_finish_are_answered_503_before_partnero_gives_up(
        tmp_path, pg_url, redis_server_url, redis_conn):
    # More deliveries at once than the web process has threads (16), so that most also wait for
    # a thread: each answer is still due five seconds after it was sent.
    run = time.time_ns()
    bodies = [signed(sample_delivery("partner.created", id=f"ptn_late_{run}_{i}")) for i in range(40)]
    fingerprints = [Delivery(body=body, event_type="partner.created", status="pending").fingerprint
                    for body, _ in bodies]

    def stored() -> dict[str, tuple[int, str]]:
        with db.engine_for(pg_url).connect() as conn:
            rows = conn.execute(sa.select(webhook_events.c.fingerprint, webhook_events.c.id, webhook_events.c.status)
                                .where(webhook_events.c.fingerprint.in_(fingerprints)))
            return {fp: (row_id, status) for fp, row_id, status in rows}

    def all_at_once() -> list[tuple[float, int, dict]]:
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda signed_body: answer(port, *signed_body), bodies))
        return [(took, status, answer_body) for took, status, _, answer_body in answers]

    with web(tmp_path / "web", redis_server_url, database_url=pg_url.replace("postgresql+psycopg", "postgres")) as port:
        # The database is slow to commit (a DBA's trigger that sleeps; a lock would not do: the
        # inbox's insert gives up on a lock within DATABASE_LOCK_TIMEOUT, see test_lock_waits).
        with db.engine_for(pg_url).begin() as conn:
            conn.execute(sa.text(f"CREATE FUNCTION slow_inbox() RETURNS trigger AS $$ BEGIN "
                                 f"PERFORM pg_sleep({SLOW_COMMIT_SECONDS}); RETURN NULL; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER slow_inbox BEFORE INSERT ON webhook_events "
                                 "FOR EACH STATEMENT EXECUTE FUNCTION slow_inbox()"))
        try:
            first = all_at_once()
            assert [status for _, status, _ in first] == [503] * len(bodies), first
            assert max(took for took, _, _ in first) < 5.0, sorted(took for took, _, _ in first)
            assert {answer_body["error"] for _, _, answer_body in first} == {"could not store the delivery; try again"}
            # The commits the requests waited for go through after all, and a worker is woken for
            # them: nothing is lost.
            wait_for(lambda: len(stored()) == len(bodies), timeout=60, what="the late commits")
        finally:
            with db.engine_for(pg_url).begin() as conn:
                conn.execute(sa.text("DROP TRIGGER IF EXISTS slow_inbox ON webhook_events"))
                conn.execute(sa.text("DROP FUNCTION IF EXISTS slow_inbox()"))
        assert wakeups(redis_conn) == 1
        # Partnero's retries find them: each stored once, answered as a duplicate.
        retries = all_at_once()
        assert [(status, answer_body["status"]) for _, status, answer_body in retries] == [(202, "duplicate")] * 40
        rows = stored()
        assert [answer_body["id"] for _, _, answer_body in retries] == [rows[fp][0] for fp in fingerprints]
        assert {status for _, status in rows.values()} == {"pending"}


def test_the_deploy_steps_can_be_followed_in_the_readmes_order(tmp_path, partnero_api, redis_server_url, redis_conn):
    readme = (ROOT / "README.md").read_text()
    steps = readme[readme.index("Step by step, on a Heroku-style PaaS"):readme.index("### Supported versions")]
    assert steps.index("**Register the webhook**") < steps.index("**Set the variables**") < steps.index("**Deploy.**")
    url = f"https://{HOST}/webhooks/partnero"
    # Step 4, before anything is deployed: no database, no Redis, no secret yet.
    register = subprocess.run(
        [str(BIN / "partnero-sync"), "webhooks", "register", "--url", url],
        env=environment(**partnero_env(partnero_api), DATABASE_URL=DEAD_PG_URL, REDIS_URL=DEAD_REDIS_URL),
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert register.returncode == 0, register.stdout + register.stderr
    [line] = [line for line in register.stdout.splitlines() if line.startswith("PARTNERO_WEBHOOK_SECRET=")]
    [hook] = partnero_api.webhooks
    assert hook["url"] == url
    # Steps 5 and 6: the printed line set, the web serves, and Partnero's deliveries verify.
    secret = line.split("=", 1)[1]
    with web(tmp_path / "web", redis_server_url, PARTNERO_WEBHOOK_SECRET=secret) as port:
        body, headers = signed(sample_delivery("partner.created"), secret=hook["signature"])
        assert answer(port, body, headers)[1] == 202


def test_without_the_secret_only_the_web_waits_for_it(tmp_path, redis_server_url, redis_conn):
    # The other order (deploy, then register from a one-off process): release and worker run.
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path}/x.db", REDIS_URL=redis_server_url, PORT=str(free_port()))
    for command in (procfile()["release"], "partnero-sync worker --burst"):
        done = subprocess.run(["/bin/sh", "-c", command], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    web_process = start(procfile()["web"], env, cwd=tmp_path)
    output, _ = web_process.communicate(timeout=60)
    assert web_process.returncode != 0 and b"PARTNERO_WEBHOOK_SECRET is not set" in output
