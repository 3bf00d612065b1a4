"""The alerts in the Procfile's real processes: two workers and two web processes each run a
monitor, a delivery fails, and the catcher gets exactly one alert (the monitors tick every 30 s,
so this test waits a little over two ticks)."""

from __future__ import annotations

import time

from sync.ops.monitor import TICK_SECONDS
from sync.partnero.samples import sample_delivery
from tests.conftest import empty_tables, signed
from tests.fakes.catcher import Catcher
from tests.test_processes import free_port, get, post, procfile, service_environment, start, statuses, stop, wait_for

MARKER = "MARKER-7f3a"


def test_a_failed_delivery_alerts_exactly_once_from_two_workers(pg_url, redis_server_url, redis_conn, tmp_path):
    empty_tables(pg_url)
    port = free_port()
    with Catcher() as catcher:
        env = service_environment(pg_url, redis_server_url, port, ALERT_WEBHOOK_URL=catcher.url("alerts"),
                                  REQUESTS_CA_BUNDLE=catcher.ca_bundle, PUBLIC_URL="https://sync.example.com")
        processes = procfile()
        web = start(processes["web"], env, cwd=tmp_path)
        workers = [start(processes["worker"], env, cwd=tmp_path) for _ in range(2)]
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: get(f"{base}/healthz")[0] == 200, what="the web process")
            # An amount with a decimal comma fails the mapping for good; every value holds the marker.
            document = sample_delivery("transaction.created", key=f"{MARKER}-in", amount=f"12,50 {MARKER}",
                                       customer_key=f"{MARKER}-cus", partner_id=f"{MARKER}-ptn")
            assert post(f"{base}/webhooks/partnero", *signed(document))[0] == 202
            wait_for(lambda: statuses(pg_url) == ["failed"], what="the delivery to fail")
            (message,) = catcher.wait_for(1, hook="alerts", timeout=TICK_SECONDS + 30)
            time.sleep(TICK_SECONDS + 5)  # every monitor ticked again: none sends it twice
            assert len(catcher.messages("alerts")) == 1, catcher.messages("alerts")
        finally:
            outputs = [stop(process) for process in [web, *workers]]
    assert message["text"].startswith("[partnero-sync] Needs attention: 1 deliveries failed (program default)")
    assert message["text"].endswith("https://sync.example.com/ops?program=default&status=failed")
    assert MARKER not in str(message)
    for output in outputs:
        assert catcher.url("alerts") not in output and "/hook/alerts" not in output
