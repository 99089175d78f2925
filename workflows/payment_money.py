"""A payment's money bookkeeping and deadlines, for PaymentIntentWorkflow.

Pure functions over `Money`: no Temporal commands, no clock (the workflow passes
`workflow.now()`), so calling them never changes a history and they are safe anywhere in
workflow code.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.domain import IntentStatus, TransactionStatus, TransactionType
    from core.errors import ErrorType

from workflows.payment_messages import LifecyclePolicy, Money

REFUNDABLE_STATUSES = frozenset({IntentStatus.SUCCEEDED, IntentStatus.PARTIALLY_REFUNDED})


def learn(money: Money, kind: TransactionType, transaction_id: str, amount: int,
          transaction_status: str, *, manual_capture: bool) -> None:
    """Track what the network holds after an operation succeeded."""
    if transaction_status != TransactionStatus.SUCCEEDED.value:
        return
    if kind is TransactionType.CHARGE:
        money.authorization_reference = transaction_id
        if manual_capture:
            money.amount_capturable = amount
        else:
            money.payment_reference, money.amount_received = transaction_id, amount
    elif kind is TransactionType.CAPTURE:
        money.payment_reference, money.amount_received = transaction_id, amount
        money.amount_capturable = 0
    elif kind is TransactionType.VOID:
        money.amount_capturable = 0
    else:
        money.amount_refunded += amount


def refundable(money: Money) -> int:
    return money.amount_received - money.amount_refunded


def check_amount(amount: int | None, allowed: int, what: str) -> None:
    if amount is not None and not 1 <= amount <= allowed:
        raise ApplicationError(f"amount {amount} is more than the {allowed} {what}",
                               type=ErrorType.AMOUNT_INVALID, non_retryable=True)


def arm_deadlines(money: Money, status: IntentStatus, policy: LifecyclePolicy, now: float, *,
                  authorized_at: float | None = None) -> None:
    """Start the authorization's and the refund window's clocks when their status is reached.

    The authorization's clock starts when the network authorized (`authorized_at`, from its
    answer), not when we learned of it: an answer reconciled an hour late leaves an hour less.
    """
    if status is IntentStatus.REQUIRES_CAPTURE and money.authorization_expires_at is None:
        started = now if authorized_at is None else min(authorized_at, now)
        money.authorization_expires_at = started + policy.authorization_expiry_seconds
    if status is IntentStatus.SUCCEEDED and money.refund_window_ends_at is None:
        money.refund_window_ends_at = now + policy.refund_window_seconds


def next_deadline(money: Money, status: IntentStatus, *,
                  refund_window_over: bool) -> float | None:
    """The unix time (workflow time) at which the run must wake up by itself, if any."""
    if status is IntentStatus.REQUIRES_CAPTURE:
        return money.authorization_expires_at
    if status in REFUNDABLE_STATUSES and not refund_window_over:
        return money.refund_window_ends_at
    return None
