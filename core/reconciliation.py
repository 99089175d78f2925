"""Reconciliation sweep: compare our transactions with the card network's ledger.

Pure logic, no I/O. The sweep activity loads both sides and hands them here; what comes back is
every discrepancy plus the counts of what was checked. A reference is the join key: our
transaction id is the network reference of every operation it sends.
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


@dataclass(frozen=True)
class LedgerEntry:
    reference: str
    type: str
    amount_in_cents: int
    currency: str
    status: str
    created_at: datetime

    @staticmethod
    def from_json(entry: dict[str, Any]) -> LedgerEntry:
        """One entry of the simulator's `GET /ledger` (camelCase, RFC 3339 `createdAt`)."""
        return LedgerEntry(
            reference=str(entry["reference"]), type=str(entry["type"]),
            amount_in_cents=int(entry["amountInCents"]), currency=str(entry["currency"]).lower(),
            status=str(entry["status"]),
            created_at=datetime.fromisoformat(str(entry["createdAt"]).replace("Z", "+00:00")))


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


@dataclass
class ReconciliationCounts:
    transactions_checked: int = 0
    ledger_entries_checked: int = 0
    # Ours still pending/timeout and not a discrepancy: its own workflow still asks the network
    # (an open manual review lands here too, unless the network approved).
    in_flight: int = 0
    discrepancies: int = 0


@dataclass
class Comparison:
    counts: ReconciliationCounts
    discrepancies: list[Discrepancy]


def ledger_references_in_window(ledger: Iterable[LedgerEntry], *, window_start: datetime,
                                window_end: datetime) -> set[str]:
    return {e.reference for e in ledger if window_start <= e.created_at <= window_end}


def compare(ours: Sequence[OurTransaction], ledger: Sequence[LedgerEntry], *,
            window_start: datetime, window_end: datetime) -> Comparison:
    """Every discrepancy between our transactions and the ledger for one window.

    Checked are our transactions created in the window and the ledger entries created in it.
    Each is matched by reference against everything passed in, so a pair that straddles a
    window edge (our row just before the start, the network's commit just after) still matches.
    """
    our_by_ref = {t.network_reference: t for t in ours}
    # The network commits one entry per reference; should it ever list two, the last one wins.
    ledger_by_ref = {e.reference: e for e in ledger}
    subjects = {t.network_reference for t in ours if window_start <= t.created_at <= window_end}
    subjects |= ledger_references_in_window(ledger, window_start=window_start,
                                            window_end=window_end)
    counts = ReconciliationCounts()
    found: list[Discrepancy] = []
    for reference in sorted(subjects):
        txn, entry = our_by_ref.get(reference), ledger_by_ref.get(reference)
        counts.transactions_checked += txn is not None
        counts.ledger_entries_checked += entry is not None
        kind = _kind(txn, entry)
        if kind is None and txn is not None and txn.status in UNKNOWN_STATUSES:
            counts.in_flight += 1
        if kind is not None:
            found.append(_discrepancy(kind, reference, txn, entry))
    found.sort(key=lambda d: (d.kind, d.network_reference))
    counts.discrepancies = len(found)
    return Comparison(counts, found)


def _kind(txn: OurTransaction | None, entry: LedgerEntry | None) -> DiscrepancyKind | None:
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
    if txn.status in UNKNOWN_STATUSES and not txn.in_manual_review:
        # Its workflow is still asking the network; reporting it now would be a false alarm.
        return None
    # Failed here, or given up on (manual review): only an approval at the network is wrong.
    return DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE if approved else None


def _discrepancy(kind: DiscrepancyKind, reference: str, txn: OurTransaction | None,
                 entry: LedgerEntry | None) -> Discrepancy:
    return Discrepancy(
        kind=kind.value, network_reference=reference,
        merchant_id=txn.merchant_id if txn else None,
        payment_intent_id=txn.payment_intent_id if txn else None,
        transaction_id=txn.transaction_id if txn else None,
        our_status=txn.status if txn else None,
        network_status=entry.status if entry else None,
        our_amount_in_cents=txn.amount_in_cents if txn else None,
        network_amount_in_cents=entry.amount_in_cents if entry else None,
        currency=txn.currency if txn else (entry.currency if entry else None),
        network_currency=entry.currency if entry else None)
