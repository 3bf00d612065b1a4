"""The ``org_checks`` table: the latest check of the Salesforce org against the mappings (``crm
check``'s findings, run by the worker), where every process reads it: ``status``, ``/healthz``,
``/metrics`` and ``/ops``. It holds what an admin must do, never a record's data.

One row: a check replaces the one before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync.core.clock import Clock, system_clock
from sync.store.db import metadata, transaction
from sync.store.sqltypes import UTCDateTime


class Verdict(StrEnum):
    """What a check of the org found (``org_checks.verdict``)."""

    FITS = "fits"
    MISFIT = "does not fit"
    CANNOT_TELL = "cannot tell"  # Salesforce away, the login refused, no access: tried again later


#: What a stored finding says (``sync.salesforce.fit.Finding``): what to do, where the mapping names it.
FINDING_KEYS = ("object", "field", "problem", "detail", "fix", "source")

org_checks = sa.Table(
    "org_checks",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("checked_at", UTCDateTime(), nullable=False),
    #: The mappings' Salesforce sections it checked (``sync.salesforce.org.signature``).
    sa.Column("mapping_signature", sa.String(64), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    #: Why it cannot tell (CANNOT_TELL only).
    sa.Column("reason", sa.Text),
    #: The findings, a JSON list of objects with ``FINDING_KEYS``.
    sa.Column("findings", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class OrgCheck:
    """A check of the org as stored: when, against which mappings, and what it found."""

    checked_at: datetime
    mapping_signature: str
    verdict: Verdict
    reason: str | None
    findings: tuple[dict, ...]


class OrgChecks:
    """The latest check of the org, written by the worker, read by every process."""

    def __init__(self, engine: Engine, clock: Clock = system_clock):
        self.engine = engine
        #: What time it is: stamps each check.
        self.clock = clock

    def record(self, signature: str, verdict: Verdict, findings: list[dict], reason: str | None = None) -> OrgCheck:
        """Store a check in place of the one before it; returns it as stored."""
        check = OrgCheck(self.clock(), signature, Verdict(verdict), reason,
                         tuple({key: f.get(key) for key in FINDING_KEYS} for f in findings))
        with transaction(self.engine) as conn:
            conn.execute(org_checks.delete())
            conn.execute(org_checks.insert().values(
                checked_at=check.checked_at, mapping_signature=signature, verdict=check.verdict,
                reason=reason, findings=json.dumps(list(check.findings))))
        return check

    def latest(self) -> OrgCheck | None:
        """The newest check, or None when none ran."""
        t = org_checks
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(1)).one_or_none()
        if row is None:
            return None
        return OrgCheck(row.checked_at, row.mapping_signature, Verdict(row.verdict), row.reason,
                        tuple(json.loads(row.findings)))
