"""The charts of ``/ops`` as inline SVG drawn on the server from the history's series: pure, no
JavaScript, readable on a phone (a viewBox scaled to the page's width)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from html import escape

from sync.ops.progress import duration

#: The drawing's own units; the page scales it to its width.
WIDTH, HEIGHT = 360, 190
TOP, BOTTOM, LEFT, RIGHT = 34, 22, 46, 12
#: Room for a second axis on the right (the Salesforce chart's lag).
RIGHT_AXIS = 46
#: A mark's label is cut to this many characters (the whole label is its tooltip).
MARK_LABEL = 24
#: Mark labels take turns on this many rows, so marks close together stay readable.
MARK_ROWS = 3


@dataclass(frozen=True)
class Window:
    """A span of time the charts show, drawn in steps (one point per step)."""

    name: str  # the ``window`` query parameter of /ops
    label: str
    span: timedelta
    step: timedelta
    #: How far apart the time axis' labels are.
    tick: timedelta

    @property
    def per(self) -> str:
        """How the counts are given: per minute, averaged over a step of several."""
        minutes = int(self.step.total_seconds() // 60)
        return "per minute" if minutes == 1 else f"per minute ({minutes}-minute average)"


WINDOWS = {
    "24h": Window("24h", "last 24 hours", timedelta(hours=24), timedelta(minutes=5), timedelta(hours=6)),
    "1h": Window("1h", "last hour", timedelta(hours=1), timedelta(minutes=1), timedelta(minutes=15)),
}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class Point:
    """One step of a series: counts per minute (over a step of several minutes, their average),
    gauges at their highest in it (None: no sample)."""

    at: datetime  # the step's start
    received: float | None = None
    processed: float | None = None
    failed: float | None = None
    oldest_pending_age: int | None = None
    crm_backlog: int | None = None
    crm_lag: int | None = None
    crm_refused: int | None = None


#: The values a point may hold (every field but its time).
VALUES = tuple(f.name for f in fields(Point) if f.name != "at")


@dataclass(frozen=True)
class Series:
    """What the charts draw: one point per step of ``window`` from ``start`` (included) to ``end``."""

    window: Window
    start: datetime
    end: datetime
    points: list[Point]

    @property
    def empty(self) -> bool:
        """Whether no step holds any sample."""
        return all(getattr(p, name) is None for p in self.points for name in VALUES)


@dataclass(frozen=True)
class Line:
    """One line of a chart: a field of the points, its legend, colour and axis (0 left, 1 right)."""

    field: str
    label: str
    colour: str
    axis: int = 0


@dataclass(frozen=True)
class Axis:
    """A y axis: its unit as the chart's label says it, and how a value on it is written."""

    unit: str
    fmt: Callable[[float], str]
    tops: Callable[[float], float]


@dataclass(frozen=True)
class Chart:
    """A chart ready for the page: its id, title and SVG."""

    id: str
    title: str
    svg: str


def charts(series: Series, marks: Sequence[tuple[datetime, str]] = (), crm: bool = True) -> list[Chart]:
    """The four charts of ``series`` (the two of Salesforce only when ``crm``), each with ``marks``
    (alerts' times and labels) drawn as vertical lines."""
    per = series.window.per
    count = Axis("deliveries per minute", _whole, _count_top)
    records = Axis("records", _whole, _count_top)
    age = Axis("age", duration, _age_top)
    specs = [
        ("chart-deliveries", f"Deliveries received, processed and failed {per}", (count,),
         [Line("received", "received", "#2563eb"), Line("processed", "processed", "#16a34a"),
          Line("failed", "failed", "#dc2626")]),
        ("chart-oldest-pending", "Oldest pending delivery's age", (age,),
         [Line("oldest_pending_age", "oldest pending", "#9333ea")]),
    ]
    if crm:
        specs += [
            ("chart-salesforce", "Salesforce backlog and lag", (records, age),
             [Line("crm_backlog", "backlog (records)", "#0891b2"),
              Line("crm_lag", "lag (oldest waiting)", "#ea580c", axis=1)]),
            ("chart-refusals", "Records Salesforce refused (standing)", (records,),
             [Line("crm_refused", "refused", "#dc2626")]),
        ]
    return [Chart(id_, f"{title}, {series.window.label}", svg(id_, f"{title}, {series.window.label}", series,
                                                             axes, lines, marks))
            for id_, title, axes, lines in specs]


def svg(id_: str, title: str, series: Series, axes: Sequence[Axis], lines: Sequence[Line],
        marks: Sequence[tuple[datetime, str]] = ()) -> str:
    """One chart: ``lines`` of ``series`` on ``axes`` (one or two), time along the bottom in UTC,
    a legend, a gap where a step has no sample, ``marks`` as labelled vertical lines."""
    plot = _Plot(series, axes, lines)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{id_}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(title)}" aria-describedby="{id_}-desc">',
        f"<title>{escape(title)}</title>",
        f'<desc id="{id_}-desc">{escape(_summary(series, axes, lines, marks))}</desc>',
        *plot.frame(), *_legend(lines),
    ]
    for line in lines:
        parts += plot.line(line)
    parts += plot.marks(marks)
    if series.empty:
        parts.append(f'<text class="none" x="{plot.left + plot.width / 2:.1f}" y="{TOP + plot.height / 2:.1f}" '
                     'text-anchor="middle" font-size="12" fill="#6b7280">no samples yet</text>')
    parts.append("</svg>")
    return "\n".join(parts)


class _Plot:
    """Where a chart's times and values fall in the drawing."""

    def __init__(self, series: Series, axes: Sequence[Axis], lines: Sequence[Line]):
        self.series = series
        self.axes = axes
        self.left = LEFT
        self.width = WIDTH - LEFT - (RIGHT_AXIS if len(axes) > 1 else RIGHT)
        self.height = HEIGHT - TOP - BOTTOM
        highest = [max((v for line in lines if line.axis == i for v in _field(series, line.field) if v is not None),
                       default=0) for i in range(len(axes))]
        self.tops = [axis.tops(high) for axis, high in zip(axes, highest)]

    def x(self, at: datetime) -> float:
        span = (self.series.end - self.series.start).total_seconds()
        return self.left + self.width * (at - self.series.start).total_seconds() / span

    def y(self, value: float, axis: int = 0) -> float:
        return TOP + self.height * (1 - value / self.tops[axis])

    def frame(self) -> list[str]:
        """The plot's box, the value axes' labels and grid, the time axis' labels (UTC)."""
        bottom, right = TOP + self.height, self.left + self.width
        parts = [f'<g class="grid" stroke="#e5e7eb" stroke-width="1" font-size="11" fill="#4b5563">']
        for i, axis in enumerate(self.axes):
            x, anchor = (self.left - 4, "end") if i == 0 else (right + 4, "start")
            for share in (0, 0.5, 1):
                y = self.y(self.tops[i] * share, i)
                if i == 0:
                    parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
                parts.append(f'<text class="y-label" x="{x}" y="{y + 3:.1f}" text-anchor="{anchor}" stroke="none">'
                             f"{escape(axis.fmt(self.tops[i] * share))}</text>")
        parts.append(f'<text class="unit" x="{self.left}" y="{TOP - 6}" stroke="none">'
                     f"{escape(' · '.join(axis.unit for axis in self.axes))}</text>")
        for at in _ticks(self.series.start, self.series.end, self.series.window.tick):
            x = self.x(at)
            parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}"/>')
            parts.append(f'<text class="x-label" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" stroke="none">'
                         f'{at.strftime("%H:%M")}</text>')
        parts.append(f'<text x="{right}" y="{bottom + 14}" text-anchor="end" stroke="none">UTC</text>')
        return parts + ["</g>"]

    def line(self, line: Line) -> list[str]:
        """A line as one path per run of steps with samples; a lone sample as a dot."""
        parts = [f'<g class="line" data-field="{line.field}" stroke="{line.colour}" fill="{line.colour}">']
        for run in _runs(self.series.points, line.field):
            at = [(self.x(p.at), self.y(getattr(p, line.field), line.axis)) for p in run]
            if len(at) == 1:
                parts.append(f'<circle cx="{at[0][0]:.1f}" cy="{at[0][1]:.1f}" r="1.8" stroke="none"/>')
            else:
                d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(at))
                parts.append(f'<path d="{d}" fill="none" stroke-width="1.5" stroke-linejoin="round"/>')
        return parts + ["</g>"]

    def marks(self, marks: Sequence[tuple[datetime, str]]) -> list[str]:
        """Each mark inside the window as a dashed vertical line, labelled, its tooltip the whole label."""
        parts = []
        inside = [(at, label) for at, label in sorted(marks) if self.series.start <= at <= self.series.end]
        for i, (at, label) in enumerate(inside):
            x, short = self.x(at), label if len(label) <= MARK_LABEL else label[:MARK_LABEL - 1] + "…"
            row = TOP + 11 + 11 * (i % MARK_ROWS)  # marks close together label on different rows
            parts.append(f'<g class="mark" stroke="#b45309" fill="#b45309"><title>{escape(_time(at))} UTC: '
                         f'{escape(label)}</title>'
                         f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + self.height}" stroke-width="1" '
                         f'stroke-dasharray="3,2"/>'
                         f'<text x="{x + 2:.1f}" y="{row}" font-size="10" stroke="none">{escape(short)}</text></g>')
        return parts


def _legend(lines: Sequence[Line]) -> list[str]:
    """The lines' names along the top right, each beside its colour."""
    parts, x = ['<g class="legend" font-size="11" fill="#111827">'], WIDTH - RIGHT
    for line in reversed(lines):
        x -= round(6.2 * len(line.label)) + 18
        parts.append(f'<g class="key" data-field="{line.field}"><rect x="{x}" y="{TOP - 25}" width="10" height="3" '
                     f'fill="{line.colour}"/><text x="{x + 13}" y="{TOP - 20}">{escape(line.label)}</text></g>')
    return parts + ["</g>"]


def _summary(series: Series, axes: Sequence[Axis], lines: Sequence[Line], marks) -> str:
    """The chart in words, for a screen reader: each line's latest and highest value, the marks."""
    if series.empty:
        return "No samples yet."
    said = []
    for line in lines:
        values = [v for v in _field(series, line.field) if v is not None]
        fmt = axes[line.axis].fmt
        said.append(f"{line.label}: latest {fmt(values[-1])}, highest {fmt(max(values))}" if values else
                    f"{line.label}: no samples")
    inside = [f"{_time(at)} UTC {label}" for at, label in sorted(marks) if series.start <= at <= series.end]
    return "; ".join(said) + (f". Alerts: {'; '.join(inside)}." if inside else ".")


def _runs(points: Sequence[Point], field: str) -> list[list[Point]]:
    """The runs of consecutive points that have ``field``: a point without it breaks the line."""
    runs: list[list[Point]] = [[]]
    for point in points:
        if getattr(point, field) is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(point)
    return [run for run in runs if run]


def _ticks(start: datetime, end: datetime, tick: timedelta) -> list[datetime]:
    """The round times (multiples of ``tick`` since midnight UTC) from ``start`` to ``end``."""
    seconds = tick.total_seconds()
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    first = epoch + timedelta(seconds=math.ceil((start - epoch).total_seconds() / seconds) * seconds)
    return [first + i * tick for i in range(int((end - first) / tick) + 1)]


def _count_top(highest: float) -> float:
    """The top of a count axis: 2, 4, 6 or 10 times a power of ten, at or above ``highest``."""
    power = 1
    while True:
        for factor in (2, 4, 6, 10):
            if factor * power >= highest:
                return factor * power
        power *= 10


#: Tops of an age axis, in seconds: whole minutes and hours, so the middle label is round too.
_AGE_TOPS = (60, 120, 240, 600, 1200, 1800, 3600, 7200, 4 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 48 * 3600)


def _age_top(highest: float) -> float:
    return next((top for top in _AGE_TOPS if top >= highest), math.ceil(highest / 86400) * 86400)


def _whole(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M")


def _field(series: Series, field: str) -> list[int | None]:
    return [getattr(p, field) for p in series.points]
