"""The /ops charts as SVG (sync/ops/charts.py) and the points they draw (sync/ops/history.points):
pure, read back as XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest

from sync.ops import charts as charts_module
from sync.ops.charts import BOTTOM, HEIGHT, LEFT, RIGHT, RIGHT_AXIS, TOP, WIDTH, WINDOWS, Point, Series, charts
from sync.ops.history import points
from sync.store.history import Sample

SVG = "{http://www.w3.org/2000/svg}"
END = datetime(2026, 3, 14, 12, 1, tzinfo=timezone.utc)
HOUR = WINDOWS["1h"]
DAY = WINDOWS["24h"]


def hour(values: dict[int, dict]) -> Series:
    """The last hour, minute by minute, with ``values`` at the minutes given (0: the first)."""
    start = END - HOUR.span
    return Series(HOUR, start, END, [Point(start + timedelta(minutes=i), **values.get(i, {})) for i in range(60)])


def drawn(series: Series, marks=(), crm: bool = True) -> dict[str, ET.Element]:
    found = {}
    for chart in charts(series, marks, crm=crm):
        root = ET.fromstring(chart.svg)  # parses as XML, or fails here
        assert root.tag == f"{SVG}svg" and root.get("id") == chart.id
        found[chart.id] = root
    return found


def line(root: ET.Element, field: str) -> ET.Element:
    return root.find(f"{SVG}g[@class='line'][@data-field='{field}']")


def path_points(element: ET.Element) -> list[list[tuple[float, float]]]:
    """Each path's points, in drawing units."""
    return [[(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+),([\d.]+)", path.get("d"))]
            for path in element.findall(f"{SVG}path")]


def plot_x(minute: int, right: int = RIGHT) -> float:
    return LEFT + (WIDTH - LEFT - right) * minute / 60


def plot_y(value: float, top: float) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / top)


def test_each_chart_is_titled_described_and_scales_to_the_page():
    found = drawn(hour({i: {"received": 3, "processed": 2, "failed": 0, "oldest_pending_age": 40, "crm_backlog": 5,
                            "crm_lag": 90, "crm_refused": 1} for i in range(60)}))
    assert list(found) == ["chart-deliveries", "chart-oldest-pending", "chart-salesforce", "chart-refusals"]
    for root in found.values():
        assert root.get("width") == "100%" and root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
        assert root.get("role") == "img"
        assert root.get("aria-label") == root.find(f"{SVG}title").text
        assert root.get("aria-label").endswith(", last hour")
        assert root.find(f"{SVG}desc").get("id") == root.get("aria-describedby")
        assert not root.findall(f".//{SVG}script")
    deliveries = found["chart-deliveries"]
    assert deliveries.get("aria-label") == "Deliveries received, processed and failed per minute, last hour"
    assert deliveries.find(f"{SVG}desc").text == ("received: latest 3, highest 3; processed: latest 2, highest 2; "
                                                  "failed: latest 0, highest 0.")
    legend = [t.text for t in deliveries.iterfind(f"{SVG}g[@class='legend']//{SVG}text")]
    assert sorted(legend) == ["failed", "processed", "received"]
    assert "lag (oldest waiting): latest 90 s" in found["chart-salesforce"].find(f"{SVG}desc").text


def test_the_points_fall_where_their_time_and_value_say():
    values = {i: {"received": i % 5} for i in range(60)}
    root = drawn(hour(values))["chart-deliveries"]
    (run,) = path_points(line(root, "received"))
    assert len(run) == 60
    top = 4  # the axis' top: 2, 4, 6 or 10 times a power of ten, at or above the highest (4)
    for minute, (x, y) in enumerate(run):
        assert x == pytest.approx(plot_x(minute), abs=0.06)
        assert y == pytest.approx(plot_y(minute % 5, top), abs=0.06)
    y_labels = [t.text for t in root.iterfind(f".//{SVG}text[@class='y-label']")]
    assert y_labels == ["0", "2", "4"]
    assert root.find(f".//{SVG}text[@class='unit']").text == "deliveries per minute"


def test_a_step_without_a_sample_is_a_gap_and_a_lone_sample_a_dot():
    values = {i: {"oldest_pending_age": 60} for i in (*range(0, 10), 20, *range(30, 60))}
    root = drawn(hour(values))["chart-oldest-pending"]
    drawn_line = line(root, "oldest_pending_age")
    runs = path_points(drawn_line)
    assert [len(run) for run in runs] == [10, 30]
    assert runs[0][-1][0] == pytest.approx(plot_x(9), abs=0.06) and runs[1][0][0] == pytest.approx(plot_x(30), abs=0.06)
    (dot,) = drawn_line.findall(f"{SVG}circle")
    assert float(dot.get("cx")) == pytest.approx(plot_x(20), abs=0.06)
    # The age axis is in time: a highest of 60 s tops at 1 minute.
    assert [t.text for t in root.iterfind(f".//{SVG}text[@class='y-label']")] == ["0 s", "30 s", "60 s"]


def test_the_time_axis_is_labelled_in_utc_at_round_times():
    root = drawn(hour({0: {"received": 1}}))["chart-deliveries"]
    labels = [t.text for t in root.iterfind(f".//{SVG}text[@class='x-label']")]
    assert labels == ["11:15", "11:30", "11:45", "12:00"]  # the hour from 11:01 to 12:01
    assert "UTC" in [t.text for t in root.iter(f"{SVG}text")]
    start = END - DAY.span
    day = Series(DAY, start, END, [Point(start + i * DAY.step, received=1) for i in range(288)])
    root = drawn(day)["chart-deliveries"]
    assert [t.text for t in root.iterfind(f".//{SVG}text[@class='x-label']")] == ["18:00", "00:00", "06:00", "12:00"]
    assert root.get("aria-label") == ("Deliveries received, processed and failed per minute (5-minute average), "
                                      "last 24 hours")


def test_alerts_are_marked_at_their_time_with_their_label():
    inside = (END - timedelta(minutes=30), "Salesforce refused 12 records <Contact>")
    outside = (END - timedelta(hours=2), "too old to show")
    found = drawn(hour({i: {"received": 1} for i in range(60)}), marks=[inside, outside])
    for root in found.values():
        (mark,) = root.findall(f"{SVG}g[@class='mark']")
        assert mark.find(f"{SVG}title").text == "2026-03-14 11:31 UTC: Salesforce refused 12 records <Contact>"
        x = float(mark.find(f"{SVG}line").get("x1"))
        right = RIGHT_AXIS if root.get("id") == "chart-salesforce" else RIGHT
        assert x == pytest.approx(plot_x(30, right), abs=0.06)
        assert mark.find(f"{SVG}text").text == "Salesforce refused 12 r…"
        assert "Alerts: 2026-03-14 11:31 UTC Salesforce refused 12 records <Contact>." in root.find(f"{SVG}desc").text
        assert "too old" not in ET.tostring(root, encoding="unicode")


def test_the_salesforce_chart_has_a_second_axis_for_the_lag():
    values = {i: {"crm_backlog": 25 + i % 16, "crm_lag": 3000} for i in range(60)}
    root = drawn(hour(values))["chart-salesforce"]
    labels = [t.text for t in root.iterfind(f".//{SVG}text[@class='y-label']")]
    assert labels == ["0", "20", "40", "0 s", "30 min", "60 min"]
    assert root.find(f".//{SVG}text[@class='unit']").text == "records · age"
    (lag,) = path_points(line(root, "crm_lag"))
    assert lag[0][1] == pytest.approx(plot_y(3000, 3600), abs=0.06)  # on its own axis
    (backlog,) = path_points(line(root, "crm_backlog"))
    assert backlog[0][1] == pytest.approx(plot_y(25, 40), abs=0.06)


def test_no_samples_says_so_and_salesforce_off_has_no_salesforce_charts():
    found = drawn(hour({}), crm=False)
    assert list(found) == ["chart-deliveries", "chart-oldest-pending"]
    for root in found.values():
        assert root.find(f"{SVG}text[@class='none']").text == "no samples yet"
        assert root.find(f"{SVG}desc").text == "No samples yet."
        assert not root.findall(f".//{SVG}path")


def test_points_add_up_programs_and_steps_and_keep_gaps():
    start = END - DAY.span
    at = start + timedelta(minutes=10)  # the third step of 5 minutes
    samples = [
        Sample("default", at, received=3, processed=2, failed=None, oldest_pending_age=100, crm_backlog=5,
               crm_lag=50, crm_refused=1),
        Sample("friends", at, received=4, processed=None, failed=1, oldest_pending_age=300, crm_backlog=2,
               crm_lag=20, crm_refused=0),
        Sample("default", at + timedelta(minutes=1), received=1, processed=1, failed=0, oldest_pending_age=160,
               crm_backlog=9, crm_lag=60, crm_refused=1),
        Sample("default", start - timedelta(minutes=1), received=99),  # before the window
    ]
    found = points(samples, start, END, DAY.step)
    assert len(found) == 288 and found[0].at == start and found[-1].at == END - DAY.step
    # Each minute's programs added up (received 7, then 1; backlog 7, then 9), then the step's
    # counts averaged over its minutes that have them, its gauges at their highest.
    assert found[2] == Point(start + 2 * DAY.step, received=4, processed=1.5, failed=0.5, oldest_pending_age=300,
                             crm_backlog=9, crm_lag=60, crm_refused=1)
    assert all(p == Point(p.at) for i, p in enumerate(found) if i != 2)
    assert charts_module.Series(DAY, start, END, found).empty is False
    assert charts_module.Series(DAY, start, END, points([], start, END, DAY.step)).empty is True
