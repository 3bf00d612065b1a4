"""Three Partnero programs through the Procfile's real processes: gunicorn's web and a worker, on
PostgreSQL. The same ids in every program; ``friends`` rotating its secret; ``brand-x`` with
mappings that cannot apply to its transactions. Each program's records come out its own, only
brand-x's transactions fail, and the processes' log lines name the program."""

from __future__ import annotations

import json
import shutil
import subprocess

import sqlalchemy as sa

from sync.partnero.samples import sample_delivery
from sync.store import db, ledger
from sync.store.inbox import webhook_events
from tests.conftest import MAPPINGS, empty_tables, signed
from tests.test_processes import free_port, get, post, procfile, service_environment, start, stop, wait_for

SECRETS = {"default": "d-secret", "friends": "f-new,f-old", "brand-x": "x-secret"}


def test_three_programs_through_the_real_web_and_worker(pg_url, redis_server_url, redis_conn, tmp_path):
    broken = tmp_path / "brand-x-mappings"
    shutil.copytree(MAPPINGS, broken)
    transaction = broken / "transaction.yml"
    transaction.write_text(transaction.read_text().replace("identity: data.key\n", "identity: data.number\n"))
    empty_tables(pg_url)
    port = free_port()
    env = service_environment(pg_url, redis_server_url, port, PARTNERO_PROGRAMS="default,friends,brand-x",
                              PARTNERO_DEFAULT_WEBHOOK_SECRET=SECRETS["default"],
                              PARTNERO_FRIENDS_WEBHOOK_SECRET=SECRETS["friends"],
                              PARTNERO_BRAND_X_WEBHOOK_SECRET=SECRETS["brand-x"],
                              PARTNERO_BRAND_X_MAPPINGS_DIR=str(broken), LOG_FORMAT="json")
    del env["PARTNERO_WEBHOOK_SECRET"]
    processes = procfile()
    release = subprocess.run(["/bin/sh", "-c", processes["release"]], env=env, cwd=tmp_path,
                                           capture_output=True, text=True)
    assert release.returncode == 0, release.stdout + release.stderr
    web = start(processes["web"], env, cwd=tmp_path)
    worker = start(processes["worker"], env, cwd=tmp_path)
    sale = sample_delivery("transaction.created", key="tr_1", partner="ptn_1", amount=100, amount_units="USD",
                           rewards=[{"key": "tr_1", "partner": "ptn_1", "amount": 10, "amount_units": "USD",
                                     "status": "ok"}])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")
        answers = []
        for name in ("default", "friends", "brand-x"):
            for i, secret in enumerate(SECRETS[name].split(",")):  # friends signs with its new secret and its old one
                partner = sample_delivery("partner.created", id="ptn_1", name=f"{name}-{i}")
                for document in (partner, sale):
                    body, headers = signed(json.dumps(document).encode(), secret=secret)
                    answers.append(post(f"{base}/webhooks/partnero/{name}", body, headers))
        body, headers = signed(json.dumps(sale).encode(), secret=SECRETS["default"])
        wrong = post(f"{base}/webhooks/partnero/friends", body, headers)  # another program's secret
        assert [status for status, _ in answers] == [202] * 8 and wrong[0] == 401
        # The sale's bytes again to friends, signed with its other secret: the same delivery.
        assert [a["status"] for _, a in answers] == ["queued"] * 5 + ["duplicate"] + ["queued"] * 2

        def settled() -> bool:
            with db.engine_for(pg_url).connect() as conn:
                return not conn.execute(sa.select(sa.func.count()).select_from(webhook_events)
                                        .where(webhook_events.c.status == "pending")).scalar()

        wait_for(settled, what="the worker to apply every program's deliveries")
    finally:
        web_output = stop(web)
        worker_output = stop(worker)
    assert web.returncode == 0 and worker.returncode == 0, web_output + worker_output

    with db.engine_for(pg_url).connect() as conn:
        outcomes = sorted(conn.execute(sa.select(webhook_events.c.program, webhook_events.c.event_type,
                                                 webhook_events.c.status)).all())
        partners = conn.execute(sa.text("SELECT program, partner_id FROM partners ORDER BY program")).all()
        owed = {(t.program, t.partner_id): t.owed for t in ledger.totals(conn, program=None)}
    assert outcomes == [("brand-x", "partner.created", "processed"), ("brand-x", "transaction.created", "failed"),
                        ("default", "partner.created", "processed"), ("default", "transaction.created", "processed"),
                        ("friends", "partner.created", "processed"), ("friends", "partner.created", "processed"),
                        ("friends", "transaction.created", "processed")]
    assert partners == [("brand-x", "ptn_1"), ("default", "ptn_1"), ("friends", "ptn_1")]
    assert owed == {("default", "ptn_1"): 10, ("friends", "ptn_1"): 10}  # never added across programs
    lines = [json.loads(line) for line in (web_output + worker_output).splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["message"].startswith("delivery failed")]
    assert [line.get("program") for line in failed] == ["brand-x"]
    assert {line.get("program") for line in lines if line["message"] == "delivery queued"} == {
        "default", "friends", "brand-x"}
