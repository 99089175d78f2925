"""Plain domain records shared by the ledger, the rules and the network."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from cardnet.models import OperationIn, OperationType

Status = Literal["approved", "declined"]


def now_rfc3339() -> str:
    """Current UTC time as RFC 3339 with millisecond precision and a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_seconds(rfc3339: str) -> float:
    """Epoch seconds of a timestamp written by now_rfc3339."""
    return datetime.fromisoformat(rfc3339).timestamp()


@dataclass(frozen=True)
class Operation:
    """What the network knows about an operation request before deciding it."""

    reference: str
    type: OperationType
    amount_in_cents: int
    currency: str
    brand: str | None
    parent_reference: str | None
    # Digest of everything that identifies the request, to detect a reused reference.
    fingerprint: str
    created_at: str
    # Card 1091: the status API answers `not_found` for a while after the commit. Stored, since
    # a status query carries only the reference, never the card.
    status_lags: bool = False

    @classmethod
    def from_request(
        cls, body: OperationIn, brand: str | None, *, status_lags: bool = False
    ) -> Operation:
        card_number = body.card.number if body.card else ""
        currency = body.currency.lower()
        # The card number only enters as a digest: the ledger never stores a full PAN.
        raw = "|".join(
            [
                body.type.value,
                str(body.amount_in_cents),
                currency,
                card_number,
                body.parent_reference or "",
            ]
        )
        return cls(
            reference=body.reference,
            type=body.type,
            amount_in_cents=body.amount_in_cents,
            currency=currency,
            brand=brand,
            parent_reference=body.parent_reference,
            fingerprint=hashlib.sha256(raw.encode()).hexdigest(),
            created_at=now_rfc3339(),
            status_lags=status_lags,
        )


@dataclass(frozen=True)
class Decision:
    status: Status
    decline_code: str | None = None

    @classmethod
    def approve(cls) -> Decision:
        return cls("approved")

    @classmethod
    def decline(cls, code: str) -> Decision:
        return cls("declined", code)


@dataclass(frozen=True)
class Committed:
    """A ledger entry: an operation with its final decision."""

    op: Operation
    decision: Decision
    committed_at: str


class HoldKind(StrEnum):
    # Commits by itself when due_at passes.
    TIMER = "timer"
    # Commits only once the reference's status has been queried enough times.
    POLLS = "polls"


@dataclass(frozen=True)
class Hold:
    """An operation the network has accepted but not decided yet."""

    op: Operation
    kind: HoldKind
    # Wall-clock epoch seconds (not monotonic) so the due time survives a restart.
    due_at: float
    # None means "apply the parent rules at commit time" (held capture/void/refund).
    decision: Decision | None
    status_queries: int = 0
