"""Reconcile: compare Partnero's lists with the warehouse and the ledger, report the drift, and
(with ``fix``) apply the corrections through the pipeline every webhook takes.

Drift is what webhooks missed: records missing here or stale here, archived or deleted upstream
without a webhook, reward statuses or amounts that moved (``sync.rules.drift``). A record held
here that the lists no longer show is looked up on its own (``GET /{list}/{id}``): when Partnero
answers 404 it is gone, and the fix deletes it here too, but for a transaction, which is left for
a person (``NEVER_DELETED_BY_ABSENCE``); when Partnero still has it, it is compared like any
listed object.

A reconciliation is of one program: its lists (read with its key) against its records only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sync.mapping import MappingSet
from sync.ops.terminal import safe
from sync.partnero.resync import Examined, Resync
from sync.rules import drift, listed
from sync.rules.drift import Drift
from sync.settings import DEFAULT_PROGRAM
from sync.store.inbox import Delivery, DeliveryStatus


@dataclass
class Report:
    """What a reconciliation found (the drifting records, the objects listed) and, with ``fix``, did."""

    drifts: list[Drift] = field(default_factory=list)
    #: Objects listed, per list.
    listed: Counter = field(default_factory=Counter)
    #: With ``fix``: deliveries applied, and those that failed (each recorded on its inbox row).
    fixed: int = 0
    failed: int = 0
    #: Drifting records ``fix`` leaves for a person (``NEVER_DELETED_BY_ABSENCE``).
    left: int = 0
    #: The program whose lists and records were compared.
    program: str = DEFAULT_PROGRAM

    def counts(self) -> dict[str, int]:
        found = Counter(d.kind for d in self.drifts)
        return {kind: found[kind] for kind in drift.DriftKind if found[kind]}

    def as_dict(self) -> dict:
        return {"program": self.program, "listed": dict(self.listed), "drift": [d.as_dict() for d in self.drifts],
                "counts": self.counts(), "fixed": self.fixed, "failed": self.failed, "left": self.left}


#: Lists whose records are never deleted here because Partnero no longer lists them: a refunded
#: transaction is listed (``deleted_at`` set), so one that is missing altogether was hard-deleted,
#: or moved under the pages while they were read, or Partnero's single-object lookup for it is
#: not what we take it for (its reference documents ``GET /transactions?key=``): reversing a
#: commission on that evidence is for a person to decide.
NEVER_DELETED_BY_ABSENCE = frozenset({"transactions"})
KEPT = "left as it is, also by --fix: a refund is never inferred from absence; check it in Partnero"


class Reconcile:
    """One program's lists, compared with what is held of it, page by page, through ``Resync``."""

    def __init__(self, services, api, *, page_size: int = 250, program: str = DEFAULT_PROGRAM,
                 mappings: MappingSet | None = None):
        """``api`` reads ``program``'s lists (its key); ``mappings`` are the program's (None: the process's)."""
        self.services = services
        self.api = api
        self.program = program
        self.resync = Resync(services, source="reconcile", program=program, mappings=mappings)
        self.page_size = page_size

    def run(self, entities: tuple[str, ...] | None = None, *, fix: bool = False,
            on_page: Callable[[str, int, int | None], None] | None = None) -> Report:
        """Compare every object of ``entities``' lists (None: every list a mapping loads from) with
        what is held; with ``fix``, apply the corrections. ``on_page(list, page, last page)`` is
        told of each page read. ``ConfigurationError``, before anything is read, when no mapping
        loads one of the lists."""
        report = Report(program=self.program)
        for entity, mapping in listed.mappings_for(self.resync.mappings, entities).items():
            if mapping.warehouse is None:
                continue
            seen: set[str] = set()
            for page in self.api.pages(entity, limit=self.page_size):
                report.listed[entity] += len(page.objects)
                examined = self.resync.examine(entity, page.objects, page.observed_at)
                seen.update(examined.seen)
                self._take(report, examined, fix)
                if on_page is not None:
                    on_page(entity, page.number, page.last_page)
            with self.services.inbox.engine.connect() as conn:
                held = self.services.warehouse.live_keys(conn, mapping.warehouse.table, program=self.program)
            for key in sorted(held - seen):
                observed_at = self.services.clock()
                obj = self.api.get(entity, key)
                if obj is not None:  # listed elsewhere meanwhile (the list moved under the pages)
                    self._take(report, self.resync.examine(entity, [obj], observed_at), fix)
                    continue
                if entity in NEVER_DELETED_BY_ABSENCE:
                    report.drifts.append(Drift(entity, key, drift.DriftKind.GONE, reason=KEPT))
                    report.left += 1
                    continue
                report.drifts.append(Drift(entity, key, drift.DriftKind.GONE))
                item = listed.gone(mapping, entity, key, observed_at, "reconcile")
                if fix and item is not None:
                    gone = [Delivery(body, event, DeliveryStatus.PENDING, key, self.program)
                            for event, body in item.bodies()]
                    self._apply(report, Examined(entity, deliveries=gone))
        return report

    def _take(self, report: Report, examined: Examined, fix: bool) -> None:
        report.drifts += examined.drifts
        if fix:
            self._apply(report, examined)

    def _apply(self, report: Report, examined: Examined) -> None:
        applied = self.resync.apply(examined)
        report.fixed += applied.processed
        report.failed += applied.failed


def render(report: Report, fixed: bool = False) -> str:
    """The report as a person reads it: one line per drifting record, then the counts."""
    lines = []
    if report.drifts:
        rows = [("list", "record", "drift", "what differs")]
        rows += [(d.entity, safe(d.key), d.kind, safe(d.reason or ", ".join(d.fields))) for d in report.drifts]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines += [("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]).rstrip()
                  for row in rows]
        lines.append("")
    listed_text = ", ".join(f"{n:,} {entity}" for entity, n in report.listed.items()) or "nothing"
    lines.append(f"listed: {listed_text}")
    counts = report.counts()
    if not counts:
        lines.append("no drift: the warehouse and the ledger hold what Partnero lists")
    else:
        lines.append("drift: " + ", ".join(f"{n:,} {kind}" for kind, n in counts.items()))
        if fixed:
            lines.append(f"fixed: {report.fixed:,} deliveries applied, {report.failed:,} failed"
                         + (" (each recorded with its reason: `partnero-sync status`, /ops)" if report.failed else "")
                         + (f"; {report.left:,} left for a person" if report.left else ""))
        else:
            lines.append("run with --fix to apply the corrections")
    return "\n".join(lines)
