"""/ops in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver,
against the app on a real HTTP server. An operator finds a failed delivery and replays it: the
page shows it queued, then, once a worker applied it, its outcome; an operator narrows the list to
one program; the charts show the history, switch windows and keep the program; the pages fit a
desktop and a phone."""

from __future__ import annotations

import json
import os
import struct
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from app import create_app
from sync.core.clock import system_clock
from sync.partnero.samples import sample_delivery
from sync.settings import Program
from sync.store import db
from sync.store.alerts import AlertStore
from sync.store.history import HistoryStore, Sample
from sync.store.inbox import Delivery, DeliveryStatus, Inbox
from tests.conftest import SECRETS, _unavailable, migrate
from tests.ops_helpers import AUTH, fix_customer_identity, friend_customer, ops_settings, post, unparseable_amount, work

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module; it never downloads anything."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _unavailable("Chromium", FileNotFoundError(f"{' and '.join(missing)} not found"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch a browser or a driver
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except WebDriverException as exc:
            _unavailable("Chromium", exc)
        try:
            driver.set_page_load_timeout(30)
            # The operator's credentials on every request, as a browser sends them once asked.
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": AUTH})
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite only: the pages' SQL runs on PostgreSQL too in test_ops_page."""
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    migrate(url)
    return url


@pytest.fixture
def settings(settings, tmp_path):
    """Two programs: ``default`` (what the receiver's /webhooks/partnero stores) and ``friends``."""
    settings = ops_settings(settings, tmp_path)
    programs = (Program("default", SECRETS, mappings_dir=settings.mappings_dir, named=True),
                Program("friends", ("whsec_friends",), mappings_dir=settings.mappings_dir, named=True))
    return settings.with_overrides(program_list=programs)


@pytest.fixture
def friends(settings) -> list[int]:
    """Two deliveries of the program ``friends``, stored through the inbox (one failed), with the
    record ids of the default program's: newest first."""
    inbox = Inbox(db.engine_for(settings.database_url))
    documents = [sample_delivery("partner.created"), sample_delivery("customer.created")]
    stored = inbox.store_many([Delivery(json.dumps(d).encode(), d["event"], DeliveryStatus.PENDING, program="friends")
                               for d in documents])
    ids = sorted(s.id for s in stored.values())
    inbox.claim()
    inbox.mark_done(ids[:1])
    inbox.mark_failures({ids[1]: "customer.yml: identity: data.key is empty in this delivery"})
    return ids[::-1]


@pytest.fixture
def seeded(settings, redis_conn) -> dict[str, int]:
    """Deliveries as the web before the mapping fix received them, processed by a real worker;
    then the fix. The ``app`` built after this serves the fixed mapping."""
    client = create_app(settings).test_client()
    ids = {
        "partner": post(client, sample_delivery("partner.created", name="<b>Maria</b>")),
        "customer": post(client, sample_delivery("customer.created")),
        "sale": post(client, sample_delivery("transaction.created")),
        "comma": post(client, unparseable_amount()),
        "friend": post(client, friend_customer()),
        "reward": post(client, sample_delivery("reward.created", id="rw_1")),
    }
    work(settings, redis_conn)
    fix_customer_identity(settings)
    return ids


@pytest.fixture
def app(seeded, settings, redis_conn):
    return create_app(settings)


@pytest.fixture
def page(browser, live_server):
    browser.delete_all_cookies()
    return Browser(browser, live_server)


class Browser:
    def __init__(self, driver, base_url: str):
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def size(self, width: int, height: int, mobile: bool = False) -> None:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def follow(self, css: str) -> None:
        """Click a link or a form's button and wait for the page it leads to."""
        element = self.driver.find_element(By.CSS_SELECTOR, css)
        element.click()
        wait = WebDriverWait(self.driver, 15)
        wait.until(expected_conditions.staleness_of(element))
        wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")

    def text(self, css: str) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def row_ids(self) -> list[int]:
        rows = self.driver.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr")
        return [int(row.get_attribute("id").removeprefix("delivery-")) for row in rows]

    def screenshot(self, path: Path, size: tuple[int, int]) -> None:
        assert self.driver.save_screenshot(str(path))
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == size  # the IHDR's width and height
        assert len(data) > 20_000, f"{path.name} is nearly empty ({len(data)} bytes)"

    def horizontal_overflow(self) -> tuple[int, int]:
        return tuple(self.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"))


def test_an_operator_finds_the_failed_delivery_and_replays_it(page, seeded, settings, redis_conn, tmp_path):
    page.size(*DESKTOP)
    page.open("/ops")
    assert page.row_ids() == sorted(seeded.values(), reverse=True)
    assert page.text("#count-failed .value") == "2"
    page.screenshot(tmp_path / "list-desktop.png", DESKTOP)

    Select(page.driver.find_element(By.NAME, "status")).select_by_value("failed")
    page.follow("form.filters button[type=submit]")
    assert "status=failed" in page.driver.current_url
    assert page.row_ids() == [seeded["friend"], seeded["comma"]]
    friend_row = f"#delivery-{seeded['friend']}"
    assert "identity: data.key is empty in this delivery" in page.text(friend_row)

    page.follow(f"{friend_row} a")
    assert page.driver.current_url.endswith(f"/ops/deliveries/{seeded['friend']}")
    assert page.text("#status") == "failed"
    assert page.text("#last-error") == "customer.yml: identity: data.key is empty in this delivery"
    assert '"id": "rf_2217"' in page.text("#payload")
    page.screenshot(tmp_path / "failed-desktop.png", DESKTOP)

    page.follow("#replay-button")
    assert page.driver.current_url.endswith(f"/ops/deliveries/{seeded['friend']}")
    assert page.text("#flashes") == ("Replay queued: a worker applies it again with its mapping files; "
                                     "this page shows the outcome.")
    assert page.text("#status") == "pending"
    assert page.text("#replay-state").startswith("queued")
    assert "A replay was asked at " in page.text("#replay-state")

    work(settings, redis_conn)  # a worker applies it; the page, reloading by itself, shows the outcome
    WebDriverWait(page.driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda driver: page.text("#status") == "processed")
    assert page.text("#replay-state").endswith("a worker has applied it since: processed.")
    assert "customer_key\nrf_2217" in page.text("#warehouse")
    page.screenshot(tmp_path / "replayed-desktop.png", DESKTOP)

    page.open("/ops?status=failed")
    assert page.row_ids() == [seeded["comma"]]


def test_an_operator_narrows_the_list_to_one_program(page, seeded, friends, tmp_path):
    page.size(*DESKTOP)
    page.open("/ops")
    assert page.row_ids() == sorted([*seeded.values(), *friends], reverse=True)
    assert page.text("#count-failed .value") == "3"  # every program's
    assert page.text(f"#delivery-{friends[0]} .c-program") == "friends"
    assert page.text(f"#delivery-{seeded['comma']} .c-program") == "default"

    program = Select(page.driver.find_element(By.NAME, "program"))
    assert [option.text for option in program.options] == ["any", "default", "friends"]
    program.select_by_value("friends")
    page.follow("form.filters button[type=submit]")
    assert "program=friends" in page.driver.current_url
    assert page.row_ids() == friends
    assert page.text("#count-failed .value") == "1" and page.text("#count-processed .value") == "1"
    page.screenshot(tmp_path / "program-desktop.png", DESKTOP)

    # With the status too: the failed tile keeps the program.
    page.follow("#count-failed")
    assert "program=friends" in page.driver.current_url and "status=failed" in page.driver.current_url
    assert page.row_ids() == [friends[0]]
    page.follow(f"#delivery-{friends[0]} .c-id a")
    assert page.text("#program") == "friends"
    assert page.text("#last-error") == "customer.yml: identity: data.key is empty in this delivery"

    page.open("/ops?program=default&status=failed")
    assert page.row_ids() == [seeded["friend"], seeded["comma"]]
    page.open("/ops?program=nobody")  # no such program: no filter
    assert len(page.row_ids()) == len(seeded) + len(friends)


def test_the_pages_fit_a_phone(page, seeded, tmp_path):
    page.size(*PHONE, mobile=True)
    for name, path in (("list", "/ops"), ("sale", f"/ops/deliveries/{seeded['sale']}"),
                       ("failed", f"/ops/deliveries/{seeded['comma']}"),
                       ("partner", f"/ops/deliveries/{seeded['partner']}")):
        page.open(path)
        scroll_width, inner_width = page.horizontal_overflow()
        assert inner_width == PHONE[0], f"{name}: the page was zoomed out to fit ({inner_width}px)"
        assert scroll_width <= inner_width, f"{name}: {scroll_width}px wide on a {inner_width}px phone"
        page.screenshot(tmp_path / f"{name}-phone.png", PHONE)
    # The list's rows become cards: id, event type and status on the first line.
    page.open("/ops")
    card = f"#delivery-{seeded['comma']}"
    tops = {css: page.driver.find_element(By.CSS_SELECTOR, f"{card} {css}").rect["y"] for css in (".c-id", ".c-event", ".c-status")}
    assert max(tops.values()) - min(tops.values()) < 8, tops
    assert page.text(f"{card} .c-status") == "failed"
    # Other tables stack, each cell saying what it is.
    page.open(f"/ops/deliveries/{seeded['sale']}")
    cell = page.driver.find_element(By.CSS_SELECTOR, "#ledger td[data-label=Amount]")
    label = page.driver.execute_script("return getComputedStyle(arguments[0], '::before').content", cell)
    assert label == '"Amount"'
    assert cell.text == "44.7 USD"


def history(settings, end: datetime) -> None:
    """Two hours of samples before ``end``, of both programs: the default program receives 4 a
    minute, friends 1; no sample at all 50 to 40 minutes before ``end`` (a gap)."""
    samples = [Sample(program, end - timedelta(minutes=m), received=received, processed=received, failed=0,
                      oldest_pending_age=m, crm_backlog=None, crm_lag=None, crm_refused=None)
               for m in range(120) if not 40 <= m <= 50 for program, received in (("default", 4), ("friends", 1))]
    HistoryStore(db.engine_for(settings.database_url)).write(samples)


def alerted(settings, now: datetime) -> None:
    """An alert of the default program raised 30 minutes before ``now`` and resolved 10 after."""
    store = AlertStore(db.engine_for(settings.database_url))
    store.raise_alert("deliveries_failed/default", "deliveries_failed", "default", {"deliveries": 1},
                      now - timedelta(minutes=30))
    (alert,) = store.open_alerts()
    store.resolve(alert, now - timedelta(minutes=20))


def test_the_charts_show_the_history_and_switch_windows(page, seeded, settings, tmp_path):
    page.size(*DESKTOP)
    page.open("/ops")
    assert page.text("#no-samples").startswith("No samples yet")
    history(settings, system_clock().replace(second=0, microsecond=0))
    alerted(settings, system_clock())

    page.open("/ops")
    charts = page.driver.find_elements(By.CSS_SELECTOR, "#charts svg.chart")
    assert [chart.get_attribute("id") for chart in charts] == ["chart-deliveries", "chart-oldest-pending"]
    for chart in charts:
        assert chart.is_displayed() and chart.rect["width"] > 300 and chart.rect["height"] > 100
    deliveries = charts[0]
    assert deliveries.get_attribute("aria-label") == \
        "Deliveries received, processed and failed per minute (5-minute average), last 24 hours"
    assert page.text("#charts-heading") == "Last 24 hours"
    # Every program added up: 5 a minute, in every step of 5 minutes (a step half sampled too).
    described = page.driver.execute_script("return document.getElementById('chart-deliveries-desc').textContent")
    assert described.startswith("received: latest 5, highest 5;"), described
    page.screenshot(tmp_path / "charts-desktop.png", DESKTOP)

    page.follow("#window-1h")
    assert "window=1h" in page.driver.current_url
    assert page.text("#charts-heading") == "Last hour"
    # Each alert's time is marked on every chart, labelled.
    marks = page.driver.find_elements(By.CSS_SELECTOR, "#chart-deliveries g.mark")
    titles = [page.driver.execute_script("return arguments[0].querySelector('title').textContent", mark)
              for mark in marks]
    assert [title.split(" UTC: ")[1] for title in titles] == ["deliveries_failed", "deliveries_failed resolved"]
    assert all(mark.find_element(By.TAG_NAME, "text").is_displayed() for mark in marks)
    assert page.driver.find_element(By.ID, "chart-deliveries").get_attribute("aria-label").endswith(
        "per minute, last hour")
    # The gap: the received line is two runs, not one drawn across the missing minutes.
    paths = page.driver.find_elements(By.CSS_SELECTOR, "#chart-deliveries g.line[data-field=received] path")
    assert len(paths) == 2

    # The program filter keeps the window, and the charts become that program's.
    program = Select(page.driver.find_element(By.NAME, "program"))
    program.select_by_value("friends")
    page.follow("form.filters button[type=submit]")
    assert "window=1h" in page.driver.current_url and "program=friends" in page.driver.current_url
    assert page.text("#charts-heading") == "Last hour: program friends"
    described = page.driver.execute_script("return document.getElementById('chart-deliveries-desc').textContent")
    assert described.startswith("received: latest 1, highest 1;"), described
    page.follow("#window-24h")
    assert "program=friends" in page.driver.current_url and "window=24h" in page.driver.current_url


def test_the_charts_fit_a_phone(page, seeded, settings, tmp_path):
    history(settings, system_clock().replace(second=0, microsecond=0))
    alerted(settings, system_clock())
    page.size(375, 812, mobile=True)
    for window in ("24h", "1h"):
        page.open(f"/ops?window={window}")
        scroll_width, inner_width = page.horizontal_overflow()
        assert inner_width == 375, f"{window}: the page was zoomed out to fit ({inner_width}px)"
        assert scroll_width <= inner_width, f"{window}: {scroll_width}px wide on a {inner_width}px phone"
        for chart in page.driver.find_elements(By.CSS_SELECTOR, "#charts svg.chart"):
            assert chart.is_displayed() and chart.rect["width"] > 250
            assert chart.rect["x"] >= 0 and chart.rect["x"] + chart.rect["width"] <= 375
            for label in chart.find_elements(By.CSS_SELECTOR, "g.mark text"):  # the alerts' marks, on the phone too
                assert label.is_displayed() and 0 <= label.rect["x"] <= 375
        assert len(page.driver.find_elements(By.CSS_SELECTOR, "#chart-deliveries g.mark")) == 2
        page.screenshot(tmp_path / f"charts-{window}-phone.png", (375, 812))
