"""Domain vocabulary shared by every layer: ids, money, currencies, statuses, cards."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

MIN_AMOUNT = 1
MAX_AMOUNT = 99_999_999

# Zero-decimal currencies take amounts in whole units; the rest in cents.
SUPPORTED_CURRENCIES = frozenset({"usd", "eur", "gbp", "jpy", "cad", "aud", "chf", "sek"})
ZERO_DECIMAL_CURRENCIES = frozenset({"jpy"})


def new_id(prefix: str) -> str:
    """Opaque, unguessable id with its type prefix (`pi_…`, `txn_…`)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def transaction_id_for(payment_intent_id: str, update_id: str) -> str:
    """The id (and network reference) of the transaction an Update creates, derived from the
    Update's id, so the API knows which transaction to answer with before the workflow has
    recorded it, and a retried Update (same id) names the same transaction.

    Pure and deterministic: the workflow calls it too (no clock, no randomness).
    """
    digest = hashlib.sha256(f"{payment_intent_id}\n{update_id}".encode()).hexdigest()
    return f"txn_{digest[:24]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IntentStatus(StrEnum):
    CREATED = "created"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class TransactionStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"


class TransactionType(StrEnum):
    CHARGE = "charge"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"


class CancellationReason(StrEnum):
    """Why an intent was canceled (Stripe's words); `expired` is set by the workflow only."""

    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    ABANDONED = "abandoned"
    EXPIRED = "expired"


class CaptureMethod(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class NetworkOutcome(StrEnum):
    """What the card network told us about one operation."""

    APPROVED = "approved"
    DECLINED = "declined"
    # Network failed without charging, after every allowed retry with the same reference.
    FAILED = "failed"
    # Timeout or lost answer: the network may or may not have charged. Never guessed.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CardSummary:
    """The only card facts that may travel beyond the vault: no PAN, no CVC."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass
class RecordedTransaction:
    """A transaction as the database recorded it, returned through the workflow to the API so
    its answer needs no second read. Times are unix seconds (plain JSON in Temporal history)."""

    id: str
    type: str
    status: str
    amount_in_cents: int = 0
    decline_code: str | None = None
    failure_code: str | None = None
    reconciled: bool = False
    created_at: float | None = None  # None: not read back (an answer that was not recorded)
    updated_at: float | None = None
