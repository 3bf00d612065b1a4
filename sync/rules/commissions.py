"""What the commission ledger should say, as plain functions of values: each reward's standing,
and the entries that bring a transaction's rewards to their newest state. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sync.mapping.evaluate import Reward

class Standing(StrEnum):
    """How a reward stands in the ledger (``commission_entries.standing``), in the order
    buckets sort by."""

    APPROVED = "approved"
    PENDING = "pending"
    REJECTED = "rejected"
    #: The transaction was refunded: the reward is not owed, whatever its status.
    REVERSED = "reversed"


#: Partnero's reward statuses. Any other status, or none, counts as pending: never dropped.
STATUS_STANDING = {"ok": Standing.APPROVED, "review_period": Standing.PENDING, "rejected": Standing.REJECTED}


class EntryType(StrEnum):
    """What a ledger entry does (``commission_entries.entry_type``)."""

    COMMISSION = "commission"  # a reward booked for the first time
    ADJUSTMENT = "adjustment"  # a newer state of the reward moved it: amount, status, partner or currency
    REVERSAL = "reversal"  # its transaction was refunded


def standing(status: str | None, refunded: bool = False) -> str:
    """How a reward of ``status`` stands: approved, pending, rejected, or reversed by a refund."""
    if refunded:
        return Standing.REVERSED
    return STATUS_STANDING.get((status or "").strip().lower(), Standing.PENDING)


@dataclass(frozen=True)
class Bucket:
    """Where an amount stands: whose it is, in what, and how it stands. Money of different
    currencies, and points (``is_currency`` false), are never in one bucket."""

    partner_id: str
    currency: str | None
    is_currency: bool
    standing: str

    def sort_key(self) -> tuple:
        return (self.partner_id, self.currency or "", not self.is_currency, list(Standing).index(self.standing))


@dataclass(frozen=True)
class Entry:
    """One line of the ledger: one already stored, or one to add."""

    transaction_key: str
    reward_ref: str
    #: The entry's number among its reward's entries (1, 2, …); UNIQUE with the reward.
    seq: int
    entry_type: str
    bucket: Bucket
    amount: Decimal
    reward_status: str | None
    occurred_at: datetime | None
    event_id: int | None = None


def settle(
    transaction_key: str,
    entries: Sequence[Entry],
    rewards: Sequence[Reward] | None,
    refunded: bool,
    changed_at: datetime,
    refunded_at: datetime | None = None,
    event_id: int | None = None,
    refund_event_id: int | None = None,
) -> list[Entry]:
    """The entries to add so that each reward of the transaction stands at its newest state.

    ``entries`` are the transaction's entries so far; ``rewards`` are those of its newest state
    (None: that state is not at hand, so what stands is kept and only a refund moves it); a reward
    that stands but is not among ``rewards`` goes back to nothing. ``refunded``: every reward
    stands reversed. Entries name the delivery that moved them: ``event_id`` (the newest state),
    or for reversals ``refund_event_id`` (the refund) when known.

    Nothing is ever edited: each change is a move out of the bucket a reward stood in and into
    the one it stands in now (a delta, when only the amount changed), so a reward's entries
    always add up to its newest state. Settling again adds nothing.
    """
    chains: dict[str, list[Entry]] = {}
    for entry in entries:
        chains.setdefault(entry.reward_ref, []).append(entry)
    wanted = None if rewards is None else {reward.ref: reward for reward in rewards}
    if wanted is None and not refunded:
        return []
    added: list[Entry] = []
    for ref in sorted(set(chains) | set(wanted or ())):
        chain = sorted(chains.get(ref, []), key=lambda e: e.seq)
        reward = wanted.get(ref) if wanted is not None else None
        stands = balances(chain)
        steps = _steps(chain, reward, stands, wanted is not None, refunded)
        seq = chain[-1].seq + 1 if chain else 1
        history = list(chain)  # this reward's entries, as they grow
        for kind, step in steps:
            for bucket, amount in _moves(stands, step):
                at = _occurred_at(kind, reward, changed_at, refunded_at)
                status = _status(bucket, bucket in step, history, reward)
                by = (refund_event_id or event_id) if kind == EntryType.REVERSAL else event_id
                history.append(Entry(transaction_key, ref, seq, kind, bucket, amount, status, at, by))
                seq += 1
            stands = step
        added += history[len(chain):]
    return added


def _steps(
    chain: Sequence[Entry],
    reward: Reward | None,
    stands: dict[Bucket, Decimal],
    state_known: bool,
    refunded: bool,
) -> list[tuple[str, dict[Bucket, Decimal]]]:
    """The steps that take one reward from what ``stands`` to its newest state: (entry type,
    balances after the step). ``chain`` is the reward's entries so far; ``state_known``: the
    transaction's newest state is at hand (else only a refund moves what stands)."""
    if not state_known:
        goal = _reversed(stands)  # a refund of a state not at hand: reverse what stands
    else:
        goal = _target(reward, refunded)
    if refunded and not chain and reward is not None:
        # Refunded before it was ever booked: book it, then reverse it, so the ledger shows
        # the commission the refund took back.
        return [(EntryType.COMMISSION, _target(reward, refunded=False)), (EntryType.REVERSAL, goal)]
    return [(EntryType.REVERSAL if refunded else EntryType.ADJUSTMENT if chain else EntryType.COMMISSION, goal)]


def _occurred_at(
    entry_type: str, reward: Reward | None, changed_at: datetime, refunded_at: datetime | None
) -> datetime | None:
    """When an entry of ``entry_type`` happened: a commission when the reward was earned, as it
    says (or unknown); a reversal when the refund was (else when the state changed); any other
    entry when the state changed."""
    if entry_type == EntryType.COMMISSION:
        return reward.occurred_at if reward is not None else None
    if entry_type == EntryType.REVERSAL:
        return refunded_at or changed_at
    return changed_at


def balances(entries: Iterable[Entry]) -> dict[Bucket, Decimal]:
    """What ``entries`` add up to, per bucket (buckets that add up to nothing left out)."""
    sums: dict[Bucket, Decimal] = {}
    for entry in entries:
        sums[entry.bucket] = sums.get(entry.bucket, Decimal(0)) + entry.amount
    return {bucket: amount for bucket, amount in sums.items() if amount != 0}


def program_currency(configured: str | None, use: Mapping[str | None, int]) -> str | None:
    """The currency whose totals Salesforce gets: ``configured`` (PARTNERO_CURRENCY), else the
    one the most transactions pay commission in (``use``: currency -> transactions; ties go to
    the first in alphabetical order). None: no money commission yet."""
    if configured:
        return configured
    known = [(count, currency) for currency, count in use.items() if currency]
    if not known:
        return None
    return min(known, key=lambda item: (-item[0], item[1]))[1]


def _target(reward: Reward | None, refunded: bool) -> dict[Bucket, Decimal]:
    if reward is None or reward.amount == 0:
        return {}
    bucket = Bucket(reward.partner_id, reward.currency, reward.is_currency, standing(reward.status, refunded))
    return {bucket: reward.amount}


def _reversed(stands: dict[Bucket, Decimal]) -> dict[Bucket, Decimal]:
    """Everything that stands, moved to reversed (per partner, currency and kind)."""
    moved: dict[Bucket, Decimal] = {}
    for bucket, amount in stands.items():
        key = Bucket(bucket.partner_id, bucket.currency, bucket.is_currency, Standing.REVERSED)
        moved[key] = moved.get(key, Decimal(0)) + amount
    return {bucket: amount for bucket, amount in moved.items() if amount != 0}


def _moves(stands: dict[Bucket, Decimal], goal: dict[Bucket, Decimal]) -> list[tuple[Bucket, Decimal]]:
    """The amounts to add per bucket to go from ``stands`` to ``goal``: out of the old first."""
    moves = []
    for bucket in set(stands) | set(goal):
        delta = goal.get(bucket, Decimal(0)) - stands.get(bucket, Decimal(0))
        if delta != 0:
            moves.append((bucket, delta))
    return sorted(moves, key=lambda move: (move[1] > 0, move[0].sort_key()))


def _status(bucket: Bucket, into: bool, history: list[Entry], reward: Reward | None) -> str | None:
    """The reward status an entry is shown with: the newest state's for what moves into where
    the reward stands now, the one the bucket was booked with for what moves out of it."""
    owner = (bucket.partner_id, bucket.currency, bucket.is_currency)
    if into and reward is not None and (reward.partner_id, reward.currency, reward.is_currency) == owner:
        return reward.status
    for entry in reversed(history):
        if entry.bucket == bucket:
            return entry.reward_status
    for entry in reversed(history):
        if (entry.bucket.partner_id, entry.bucket.currency, entry.bucket.is_currency) == owner:
            return entry.reward_status
    return reward.status if reward is not None else None
