"""What a flush did (``FlushReport``): calls made, records by outcome, why it stopped, and the
Bulk API 2.0 jobs it left running. The Collections part (``sync.salesforce.flush``) and the Bulk
part (``sync.salesforce.bulk_flush``) both fill it; ``sync.salesforce.schedule`` reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.mapping import DEFAULT_PROGRAM
from sync.salesforce.client import CallRefused


@dataclass
class FlushReport:
    """What one flush (or several, ``add``-ed up) did: calls made, and records by outcome."""

    calls: int = 0
    synced: int = 0
    waiting: int = 0
    failed: int = 0
    retrying: int = 0
    #: Calls Salesforce refused as a whole (their records are counted in ``failed``).
    refused_calls: int = 0
    by_object: dict[str, int] = field(default_factory=dict)
    #: Records refused, by program (they add up to ``failed``).
    failed_by_program: dict[str, int] = field(default_factory=dict)
    #: Why the flush ended before everything due was sent: an org-wide refusal, or a stop.
    stopped: str | None = None
    #: An org-wide refusal: nothing can be sent until a person acts.
    org_refusal: CallRefused | None = None
    #: Seconds until a running Bulk API 2.0 job is looked at again (None: none runs); its object
    #: and the objects after it wait for it.
    bulk_wait: float | None = None
    #: The running bulk jobs, as ``BulkJob.as_dict`` (id, object, records, state, since).
    bulk_jobs: list[dict] = field(default_factory=list)

    def add(self, other: FlushReport) -> None:
        for name in ("calls", "synced", "waiting", "failed", "retrying", "refused_calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for obj, n in other.by_object.items():
            self.by_object[obj] = self.by_object.get(obj, 0) + n
        for program, n in other.failed_by_program.items():
            self.failed_by_program[program] = self.failed_by_program.get(program, 0) + n
        self.stopped = other.stopped or self.stopped
        self.org_refusal = other.org_refusal or self.org_refusal
        self.bulk_wait, self.bulk_jobs = other.bulk_wait, other.bulk_jobs  # the latest pass says

    def refused(self, program: str, records: int = 1) -> None:
        """Count ``records`` of ``program`` refused."""
        self.failed += records
        self.failed_by_program[program] = self.failed_by_program.get(program, 0) + records

    def summary(self) -> str:
        """One line for the log and the flush job's description; it names the programs whose
        records were refused when any is not ``default`` (one program's trouble is its own)."""
        text = (f"{self.synced} synced, {self.waiting} waiting for a parent, {self.retrying} to retry, "
                f"{self.failed} refused, in {self.calls} calls")
        if set(self.failed_by_program) - {DEFAULT_PROGRAM}:
            text += " (refused: " + ", ".join(f"{n} of {p}" for p, n in sorted(self.failed_by_program.items())) + ")"
        for job in self.bulk_jobs:
            text += f"; {bulk_job_line(job)}"
        return f"{text} ({self.stopped})" if self.stopped else text


def bulk_job_line(job: dict) -> str:
    """A running Bulk API 2.0 job (``BulkJob.as_dict``) as the log and the dashboard name it: its
    id, records, object (and program, unless ``default``) and state."""
    program = job.get("program") or DEFAULT_PROGRAM
    of = f" of {program}" if program != DEFAULT_PROGRAM else ""
    return f"bulk job {job['job_id']} ({job['records']} {job['object']}{of}): {job['state']}"
