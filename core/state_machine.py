"""The only state machine of Durapay: every allowed move of intents and transactions.

It is a pure table. The API (to answer 409 early), the workflow's update validators (to reject
before anything reaches history) and the persistence activities (which apply the move with
`WHERE status = :expected` and append its event in the same database transaction) all ask it;
nothing else compares status strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.domain import IntentStatus as I
from core.domain import TransactionStatus as T
from core.errors import IllegalTransition


class IntentAction(StrEnum):
    START_ATTEMPT = "start_attempt"
    CHARGE_SUCCEEDED = "charge_succeeded"
    AUTHORIZATION_SUCCEEDED = "authorization_succeeded"
    ATTEMPT_FAILED = "attempt_failed"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND_PARTIAL = "refund_partial"
    REFUND_FULL = "refund_full"


class TransactionAction(StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    LOSE_ANSWER = "lose_answer"


INTENT_TRANSITIONS: dict[tuple[I, IntentAction], I] = {
    (I.CREATED, IntentAction.START_ATTEMPT): I.PROCESSING,
    (I.FAILED, IntentAction.START_ATTEMPT): I.PROCESSING,
    (I.PROCESSING, IntentAction.CHARGE_SUCCEEDED): I.SUCCEEDED,
    (I.PROCESSING, IntentAction.AUTHORIZATION_SUCCEEDED): I.REQUIRES_CAPTURE,
    (I.PROCESSING, IntentAction.ATTEMPT_FAILED): I.FAILED,
    (I.REQUIRES_CAPTURE, IntentAction.CAPTURE): I.SUCCEEDED,
    (I.CREATED, IntentAction.CANCEL): I.CANCELED,
    (I.FAILED, IntentAction.CANCEL): I.CANCELED,
    (I.REQUIRES_CAPTURE, IntentAction.CANCEL): I.CANCELED,
    (I.SUCCEEDED, IntentAction.REFUND_PARTIAL): I.PARTIALLY_REFUNDED,
    (I.PARTIALLY_REFUNDED, IntentAction.REFUND_PARTIAL): I.PARTIALLY_REFUNDED,
    (I.SUCCEEDED, IntentAction.REFUND_FULL): I.REFUNDED,
    (I.PARTIALLY_REFUNDED, IntentAction.REFUND_FULL): I.REFUNDED,
}

TRANSACTION_TRANSITIONS: dict[tuple[T, TransactionAction], T] = {
    (T.PENDING, TransactionAction.SUCCEED): T.SUCCEEDED,
    (T.PENDING, TransactionAction.FAIL): T.FAILED,
    (T.PENDING, TransactionAction.LOSE_ANSWER): T.TIMEOUT,
    # Reconciliation settles an unknown outcome with the network's truth.
    (T.TIMEOUT, TransactionAction.SUCCEED): T.SUCCEEDED,
    (T.TIMEOUT, TransactionAction.FAIL): T.FAILED,
}


@dataclass(frozen=True)
class IntentMove:
    before: I
    after: I
    event_type: str


def move_intent(current: I | str, action: IntentAction) -> IntentMove:
    """The intent's next status and the event type to append, or `IllegalTransition`."""
    before = I(current)
    after = INTENT_TRANSITIONS.get((before, action))
    if after is None:
        raise IllegalTransition("payment intent", before, action.value.replace("_", " "))
    return IntentMove(before=before, after=after, event_type=f"payment.{after.value}")


def move_transaction(current: T | str, action: TransactionAction) -> T:
    before = T(current)
    after = TRANSACTION_TRANSITIONS.get((before, action))
    if after is None:
        raise IllegalTransition("transaction", before, action.value.replace("_", " "))
    return after


def can_start_charge(current: I | str) -> bool:
    return can_move_intent(current, IntentAction.START_ATTEMPT)


def can_move_intent(current: I | str, action: IntentAction) -> bool:
    return (I(current), action) in INTENT_TRANSITIONS


def refund_action(*, refunded_after: int, received: int) -> IntentAction:
    """A refund that brings the refunded total to the amount received refunds the payment."""
    return IntentAction.REFUND_FULL if refunded_after >= received else IntentAction.REFUND_PARTIAL


def is_final(current: I | str) -> bool:
    """Nothing can happen to the payment any more (canceled, refunded): the API answers 409
    without asking its workflow."""
    return not any((I(current), action) in INTENT_TRANSITIONS for action in IntentAction)


def is_refundable(current: I | str) -> bool:
    return can_move_intent(current, IntentAction.REFUND_PARTIAL)


def holds_authorization(current: I | str) -> bool:
    """Authorized, not captured: the network holds the money until a capture, a void, or the
    authorization's expiry."""
    return can_move_intent(current, IntentAction.CAPTURE)
