"""Reconciliation sweep: compare our transactions with the card network's ledger.

Pure logic, no I/O. The sweep activity loads both sides and hands them here; what comes back is
every discrepancy plus the counts of what was checked. A reference is the join key: our
transaction id is the network reference of every operation it sends. `triage` then sorts what a
sweep found against the items already open: a problem is one open item per (reference, kind)
until it is resolved, however many sweeps see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.domain import TransactionStatus, TransactionType

# Event type of a discrepancy: an operator event, never shown to merchants (they see payment.*).
DISCREPANCY_EVENT_TYPE = "reconciliation.discrepancy"

NETWORK_APPROVED = "approved"
NETWORK_DECLINED = "declined"
UNKNOWN_STATUSES = frozenset({TransactionStatus.PENDING.value, TransactionStatus.TIMEOUT.value})
# A pending/timeout transaction older than this is stuck (DURAPAY_RECONCILE_STUCK_AFTER_SECONDS).
DEFAULT_STUCK_AFTER_SECONDS = 3600
# Which ledger operations each of our transaction types may be: a charge of a manual-capture
# intent is an `authorize` at the network; the others keep their name.
NETWORK_TYPES: dict[str, frozenset[str]] = {
    TransactionType.CHARGE.value: frozenset({"charge", "authorize"}),
    TransactionType.CAPTURE.value: frozenset({"capture"}),
    TransactionType.VOID.value: frozenset({"void"}),
    TransactionType.REFUND.value: frozenset({"refund"}),
}


class DiscrepancyKind(StrEnum):
    # The network moved money (approved) that we do not show as succeeded, or do not know at all.
    CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE = "charged_at_network_not_succeeded_here"
    # We show money moved, but the network has no approved entry (declined or absent).
    SUCCEEDED_HERE_NOT_AT_NETWORK = "succeeded_here_not_at_network"
    # Both sides moved money, but not the same amount or currency.
    AMOUNT_MISMATCH = "amount_mismatch"
    # One reference, two different operations (e.g. our refund is a capture at the network).
    OPERATION_MISMATCH = "operation_mismatch"
    # Still pending/timeout here past the stuck age, whatever the network says: its workflow
    # has not settled it (dead, stuck, or waiting on an operator's review).
    STUCK_UNSETTLED = "stuck_unsettled"
    # Not found by the sweep: the payment workflow opens it when the network's late answer
    # contradicts an outcome we already recorded (e.g. an operator's manual-review verdict).
    NETWORK_CONTRADICTS_RECORDED_OUTCOME = "network_contradicts_recorded_outcome"


# The kinds `compare` finds. Only these may be cleared by a sweep that no longer finds them;
# the others were opened by someone else and stay open until an operator resolves them.
SWEEP_KINDS = frozenset(DiscrepancyKind) - {DiscrepancyKind.NETWORK_CONTRADICTS_RECORDED_OUTCOME}


class SweepTrigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


@dataclass(frozen=True)
class OurTransaction:
    network_reference: str
    merchant_id: str
    payment_intent_id: str
    transaction_id: str
    type: str
    status: str
    amount_in_cents: int
    currency: str
    created_at: datetime
    # An open manual review means the workflow gave up waiting for the network's answer.
    in_manual_review: bool
    # The reversal sent for a charge the network did not know (its ledger entry is a `void`).
    reversal_reference: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    reference: str
    type: str
    amount_in_cents: int
    currency: str
    status: str
    created_at: datetime
    parent_reference: str | None = None

    @staticmethod
    def from_json(entry: dict[str, Any]) -> LedgerEntry:
        """One entry of the simulator's `GET /ledger` (camelCase, RFC 3339 `createdAt`)."""
        return LedgerEntry(
            reference=str(entry["reference"]),
            type=str(entry["type"]),
            amount_in_cents=int(entry["amountInCents"]),
            currency=str(entry["currency"]).lower(),
            status=str(entry["status"]),
            created_at=datetime.fromisoformat(str(entry["createdAt"]).replace("Z", "+00:00")),
            parent_reference=entry.get("parentReference"),
        )


@dataclass
class Discrepancy:
    kind: str
    network_reference: str
    merchant_id: str | None = None
    payment_intent_id: str | None = None
    transaction_id: str | None = None
    our_status: str | None = None
    network_status: str | None = None
    our_amount_in_cents: int | None = None
    network_amount_in_cents: int | None = None
    # Ours when we know the transaction, else the network's; `network_currency` shows a mismatch.
    currency: str | None = None
    network_currency: str | None = None
    # Set once recorded: the open item's id (`rcd_…`, what an operator resolves) and whether
    # this sweep opened it (False: it was already open, reported again without a new alarm).
    discrepancy_id: str | None = None
    newly_opened: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.network_reference, self.kind)


@dataclass
class ReconciliationCounts:
    transactions_checked: int = 0
    ledger_entries_checked: int = 0
    # Ours still pending/timeout and not a discrepancy: its own workflow still asks the network
    # (an open manual review lands here too, unless the network approved or it is stuck).
    in_flight: int = 0
    # Everything this sweep found: newly opened plus still open (already open before it).
    discrepancies: int = 0
    newly_opened: int = 0
    still_open: int = 0
    # Open items this sweep checked again and no longer found: resolved by the sweep.
    cleared: int = 0


@dataclass
class Comparison:
    counts: ReconciliationCounts
    discrepancies: list[Discrepancy]
    # Every reference compared: an open item on one of them that was not found again is gone.
    checked_references: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OpenItem:
    """An unresolved discrepancy as stored: enough to match it with what a sweep found."""

    discrepancy_id: str
    network_reference: str
    kind: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.network_reference, self.kind)


@dataclass
class Triage:
    to_open: list[Discrepancy]
    # Found again while open: (found, the open item's id).
    still_open: list[tuple[Discrepancy, str]]
    # Open sweep items on a checked reference that the sweep did not find again.
    to_clear: list[OpenItem]


def ledger_references_in_window(
    ledger: Iterable[LedgerEntry], *, window_start: datetime, window_end: datetime
) -> set[str]:
    return {e.reference for e in ledger if window_start <= e.created_at <= window_end}


def is_stuck(txn: OurTransaction, stuck_before: datetime) -> bool:
    return txn.status in UNKNOWN_STATUSES and txn.created_at <= stuck_before


def compare(
    ours: Sequence[OurTransaction],
    ledger: Sequence[LedgerEntry],
    *,
    window_start: datetime,
    window_end: datetime,
    stuck_before: datetime,
    recheck: Iterable[str] = (),
) -> Comparison:
    """Every discrepancy between our transactions and the ledger for one window.

    Checked are our transactions created in the window and the ledger entries created in it,
    plus, whatever their age, our stuck transactions (pending/timeout created at or before
    `stuck_before`) and the `recheck` references (open stuck items, so they clear once their
    row settles). Each is matched by reference against everything passed in, so a pair that
    straddles a window edge (our row just before the start, the network's commit just after)
    still matches.

    `stuck_before` has no default: a pending/timeout row counts as in flight only while it is
    younger than the stuck age, and without that bound one the network has long answered would
    be in flight for ever, never reported.
    """
    our_by_ref = {t.network_reference: t for t in ours}
    # A reversal is ours (on its charge's row) and checked through its charge: an approval it
    # voided is net zero, no money moved.
    reversed_by = {
        t.reversal_reference: t.network_reference for t in ours if t.reversal_reference is not None
    }
    voided = {
        reversed_by[e.reference]
        for e in ledger
        if e.reference in reversed_by and e.status == NETWORK_APPROVED
    }
    # The network commits one entry per reference; should it ever list two, the last one wins.
    ledger_by_ref = {
        e.reference: e
        for e in ledger
        if e.reference not in voided and e.reference not in reversed_by
    }
    subjects = {t.network_reference for t in ours if window_start <= t.created_at <= window_end}
    in_window = ledger_references_in_window(
        ledger, window_start=window_start, window_end=window_end
    )
    subjects |= {reversed_by.get(reference, reference) for reference in in_window}
    subjects |= {t.network_reference for t in ours if is_stuck(t, stuck_before)}
    subjects |= set(recheck)
    counts = ReconciliationCounts()
    found: list[Discrepancy] = []
    for reference in sorted(subjects):
        txn, entry = our_by_ref.get(reference), ledger_by_ref.get(reference)
        counts.transactions_checked += txn is not None
        counts.ledger_entries_checked += entry is not None
        kind = _kind(txn, entry, stuck_before)
        if kind is None and txn is not None and txn.status in UNKNOWN_STATUSES:
            counts.in_flight += 1
        if kind is not None:
            found.append(_discrepancy(kind, reference, txn, entry))
    found.sort(key=lambda d: (d.kind, d.network_reference))
    counts.discrepancies = len(found)
    return Comparison(counts, found, frozenset(subjects))


def triage(comparison: Comparison, open_items: Iterable[OpenItem]) -> Triage:
    """Sort what a sweep found against the open items: open it, see it again, or clear it.

    Dedupe key is (network reference, kind). An open item the sweep did not find again is
    cleared only if the sweep checked its reference (an item outside the window is not
    judged) and only if its kind is one the sweep finds (others are not the sweep's call).
    """
    open_by_key = {item.key: item for item in open_items}
    to_open: list[Discrepancy] = []
    still_open: list[tuple[Discrepancy, str]] = []
    for found in comparison.discrepancies:
        item = open_by_key.get(found.key)
        if item is None:
            to_open.append(found)
        else:
            still_open.append((found, item.discrepancy_id))
    found_keys = {d.key for d in comparison.discrepancies}
    to_clear = [
        item
        for key, item in sorted(open_by_key.items())
        if key not in found_keys
        and item.kind in SWEEP_KINDS
        and item.network_reference in comparison.checked_references
    ]
    return Triage(to_open, still_open, to_clear)


def _kind(
    txn: OurTransaction | None, entry: LedgerEntry | None, stuck_before: datetime
) -> DiscrepancyKind | None:
    approved = entry is not None and entry.status == NETWORK_APPROVED
    if txn is None:
        # A decline we never recorded moved no money; an approval did.
        return DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE if approved else None
    if entry is not None and entry.type not in NETWORK_TYPES.get(txn.type, frozenset()):
        return DiscrepancyKind.OPERATION_MISMATCH
    if txn.status == TransactionStatus.SUCCEEDED.value:
        if entry is None or not approved:
            return DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK
        if (entry.amount_in_cents, entry.currency) != (txn.amount_in_cents, txn.currency.lower()):
            return DiscrepancyKind.AMOUNT_MISMATCH
        return None
    if txn.status in UNKNOWN_STATUSES:
        if txn.in_manual_review and approved:  # given up on, yet the network moved money
            return DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
        if is_stuck(txn, stuck_before):
            return DiscrepancyKind.STUCK_UNSETTLED
        # Its workflow is still asking the network; reporting it now would be a false alarm.
        return None
    # Failed here: only an approval at the network is wrong.
    return DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE if approved else None


def _discrepancy(
    kind: DiscrepancyKind, reference: str, txn: OurTransaction | None, entry: LedgerEntry | None
) -> Discrepancy:
    return Discrepancy(
        kind=kind.value,
        network_reference=reference,
        merchant_id=txn.merchant_id if txn else None,
        payment_intent_id=txn.payment_intent_id if txn else None,
        transaction_id=txn.transaction_id if txn else None,
        our_status=txn.status if txn else None,
        network_status=entry.status if entry else None,
        our_amount_in_cents=txn.amount_in_cents if txn else None,
        network_amount_in_cents=entry.amount_in_cents if entry else None,
        currency=txn.currency if txn else (entry.currency if entry else None),
        network_currency=entry.currency if entry else None,
    )
