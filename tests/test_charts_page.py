"""The charts on /ops through Flask's test client: deliveries posted through the real receiver and
processed by a real RQ worker, the history sampled from real snapshots, on SQLite and PostgreSQL,
with Salesforce as the local HTTPS stand-in."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest

from app.ops import PAGE_SIZE
from sync.core.clock import system_clock
from sync.ops.history import History
from sync.ops.snapshot import take
from sync.partnero.samples import sample_delivery
from sync.services import Services
from sync.store import db
from sync.store.alerts import AlertStore
from sync.store.inbox import Delivery, DeliveryStatus, Inbox
from tests.ops_helpers import AUTH, Page, ops_settings, post, unparseable_amount, work
from tests.test_salesforce_sync import password_login

SVG = "{http://www.w3.org/2000/svg}"


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def settings(settings, tmp_path, fake):
    return ops_settings(settings, tmp_path).with_overrides(salesforce=password_login(fake))


def get(client, path: str) -> tuple[Page, dict[str, ET.Element]]:
    response = client.get(path, headers=AUTH)
    assert response.status_code == 200, response.data[:500]
    html = response.get_data(as_text=True)
    charts = {}
    for svg in re.findall(r"<svg .*?</svg>", html, re.S):
        root = ET.fromstring(svg)
        charts[root.get("id")] = root
    return Page(html), charts


def desc(root: ET.Element) -> str:
    return root.find(f"{SVG}desc").text


def test_an_empty_history_says_so_plainly(client):
    page, charts = get(client, "/ops")
    assert page.text("no-samples").startswith("No samples yet")
    assert charts == {}
    assert page.text("charts-heading") == "Last 24 hours"
    assert page.text("window-1h") == "last hour" and "/ops/?window=1h" in page.links


def test_the_deliveries_page_draws_the_minutes_the_sampler_wrote(settings, client, redis_conn):
    now = system_clock().replace(second=0, microsecond=0)
    clock = Clock(now - timedelta(minutes=1))
    services = Services.build(settings, redis_conn, clock=clock)
    history = History(services.inbox.engine, clock, redis_conn)
    history.record(take(services))  # the minute before: the counters' starting point
    for document in (sample_delivery("partner.created"), sample_delivery("customer.created"), unparseable_amount()):
        post(client, document)
    work(settings, redis_conn)
    clock.now = now
    history.record(take(services))

    page, charts = get(client, "/ops?window=1h")
    assert list(charts) == ["chart-deliveries", "chart-oldest-pending", "chart-salesforce", "chart-refusals"]
    assert charts["chart-deliveries"].get("aria-label") == \
        "Deliveries received, processed and failed per minute, last hour"
    assert desc(charts["chart-deliveries"]) == ("received: latest 3, highest 3; processed: latest 2, highest 2; "
                                                "failed: latest 1, highest 1.")
    assert desc(charts["chart-oldest-pending"]) == "oldest pending: latest 0 s, highest 0 s."
    assert desc(charts["chart-salesforce"]).startswith("backlog (records): latest 0, highest 0; lag (oldest waiting): "
                                                       "latest 0 s")
    assert page.text("charts-heading") == "Last hour"
    assert "/ops/?window=24h" in page.links and "/ops/?window=1h" not in page.links

    # The default window, and one the page does not know, is the day, in steps of 5 minutes.
    for path in ("/ops", "/ops?window=7d"):
        page, charts = get(client, path)
        assert charts["chart-deliveries"].get("aria-label").endswith("per minute (5-minute average), last 24 hours")
        assert desc(charts["chart-deliveries"]).startswith("received: latest 3, highest 3;")

    # Filtered by a program, the charts are that program's and the window switch keeps the filter.
    page, charts = get(client, "/ops?program=default&status=failed")
    assert page.text("charts-heading") == "Last 24 hours: program default"
    assert "/ops/?window=1h&status=failed&program=default" in page.links
    assert "window" not in page.inputs
    # The filters' form keeps a window other than the default.
    page, _ = get(client, "/ops?window=1h")
    assert page.inputs["window"] == "1h"


def test_paging_back_keeps_the_window(settings, client):
    inbox = Inbox(db.engine_for(settings.database_url))
    inbox.store_many([Delivery(json.dumps(sample_delivery("partner.created", id=f"p{i}")).encode(), "partner.created",
                               DeliveryStatus.PENDING) for i in range(PAGE_SIZE + 1)])
    page, _ = get(client, "/ops?window=1h")
    (older,) = [link for link in page.links if "before=" in link]
    assert "window=1h" in older
    page, _ = get(client, "/ops")
    (older,) = [link for link in page.links if "before=" in link]
    assert "window" not in older


def test_each_alert_raised_and_resolved_is_marked_on_the_charts_of_its_program(settings, client, redis_conn):
    """The charts mark the alerts' times (sync.store.alerts), of the program shown and every
    program's; an alert of another program is not marked on this one's charts."""
    now = system_clock().replace(second=0, microsecond=0)
    services = Services.build(settings, redis_conn, clock=Clock(now))
    History(services.inbox.engine, services.clock, redis_conn).record(take(services))
    store = AlertStore(services.inbox.engine)
    store.raise_alert("deliveries_failed/default", "deliveries_failed", "default", {"deliveries": 1},
                      now - timedelta(minutes=20))
    store.raise_alert("no_worker", "no_worker", None, {"jobs": 1}, now - timedelta(minutes=10))
    store.raise_alert("deliveries_failed/other", "deliveries_failed", "other", {"deliveries": 1},
                      now - timedelta(minutes=5))
    (first, *_) = store.open_alerts()
    store.resolve(first, now - timedelta(minutes=2))

    def marks(path):
        _, charts = get(client, path)
        found = {chart: [m.find(f"{SVG}title").text for m in root.iter(f"{SVG}g") if m.get("class") == "mark"]
                 for chart, root in charts.items()}
        (each, *rest) = found.values()
        assert all(other == each for other in rest)  # every chart marks the same times
        return each

    said = marks("/ops?window=1h&program=default")
    assert [text.split(" UTC: ")[1] for text in said] == ["deliveries_failed", "no_worker", "deliveries_failed resolved"]
    assert said[0].startswith(f"{now - timedelta(minutes=20):%Y-%m-%d %H:%M} UTC")
    assert [text.split(" UTC: ")[1] for text in marks("/ops?window=1h")] == [
        "deliveries_failed", "no_worker", "deliveries_failed", "deliveries_failed resolved"]
