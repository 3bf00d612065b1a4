"""The org held against the mappings: each mapped object's describe read through the client, and
what ``sync.salesforce.fit`` finds in it. ``crm check`` prints it; the worker runs it when it starts
and after a mapping change, and stores it (``sync.store.org_checks``) for status, /healthz,
/metrics and /ops."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from collections.abc import Iterable
from datetime import datetime, timedelta

from sync.core.clock import Clock
from sync.core.errors import SyncError, TransientError
from sync.mapping import MappingSet
from sync.salesforce.client import SalesforceClient
from sync.salesforce.contract import contract, written_by
from sync.salesforce.fit import Finding, findings
from sync.store.org_checks import OrgCheck, OrgChecks, Verdict

log = logging.getLogger(__name__)

#: How often at most a worker checks the org again while the stored check found a misfit (an
#: admin may have fixed it since), could not tell, or was made with other mappings than its own.
RECHECK_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class OrgFit:
    """What one check found: the verdict, the findings (a misfit's), or why it cannot tell."""

    verdict: Verdict
    #: The objects checked, parents first.
    objects: tuple[str, ...]
    findings: tuple[Finding, ...] = field(default=())
    #: Why it cannot tell (CANNOT_TELL only): the error, in words, never a record's data.
    reason: str | None = None


def check(client: SalesforceClient, mappings: MappingSet | Iterable[MappingSet]) -> OrgFit:
    """Read each mapped object's describe and hold it against the mappings' contract (of one set,
    or of every program's together); a call that fails (no login, no access, Salesforce away) is
    CANNOT_TELL, never an error."""
    needs = contract(mappings)
    objects = tuple(o.name for o in needs.objects)
    try:
        described = describes(client, list(objects))
    except SyncError as exc:
        return OrgFit(Verdict.CANNOT_TELL, objects, reason=str(exc))
    found = tuple(findings(needs, described))
    return OrgFit(Verdict.MISFIT if found else Verdict.FITS, objects, found)


def describes(client: SalesforceClient, names: list[str]) -> dict:
    """Each object's describe (None: not in the org). After a passing error it is asked once more:
    an expired session is one (the client drops it and logs in again on the next call)."""
    out = {}
    for name in names:
        try:
            out[name] = client.describe(name)
        except TransientError:
            out[name] = client.describe(name)  # after a renewed login; a second failure goes up
    return out


def signature(mappings: MappingSet | Iterable[MappingSet]) -> str:
    """A digest of the mappings' Salesforce sections (of one set, or of every program's): it
    changes when what the org must have may have (``SalesforceTarget.signature`` of each), so the
    worker checks the org again. Programs sharing a section count it once."""
    parts = sorted({f"{m.salesforce.object}:{m.salesforce.signature}" for m in written_by(mappings)})
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class OrgWatch:
    """The worker's check of the org: once when it starts, then (every ``RECHECK_AFTER`` at most)
    again while the stored check does not say the org fits its mappings: a misfit (fixed since?),
    cannot tell, or a check made with other mappings (a worker of another release). It reads
    describes only: the warehouse and the flush go on whatever it finds."""

    def __init__(self, checks: OrgChecks, client: SalesforceClient, mappings: MappingSet | Iterable[MappingSet],
                 clock: Clock):
        self.checks = checks
        self.client = client
        #: Every program's mappings: the org must fit them all.
        self.mappings = mappings if isinstance(mappings, MappingSet) else tuple(mappings)
        self.clock = clock
        self.signature = signature(mappings)
        #: When this process last checked (None: not yet).
        self.checked_at: datetime | None = None

    def run(self) -> OrgCheck | None:
        """Check the org if it is due, and store what it found; the stored check otherwise."""
        now = self.clock()
        if self.checked_at is not None:
            last = self.checks.latest()
            current = (last is not None and last.mapping_signature == self.signature
                       and last.verdict is Verdict.FITS)
            if current or now - self.checked_at < RECHECK_AFTER:
                return last
        fit = check(self.client, self.mappings)
        self.checked_at = now
        if fit.verdict is Verdict.CANNOT_TELL:
            log.warning("cannot tell whether the Salesforce org fits the mappings, will try again: %s", fit.reason)
        elif fit.verdict is Verdict.MISFIT:
            log.warning("the Salesforce org does not fit the mappings: %d problems; `partnero-sync crm check` "
                        "lists them", len(fit.findings))
        return self.checks.record(self.signature, fit.verdict, [f.as_json() for f in fit.findings], fit.reason)
