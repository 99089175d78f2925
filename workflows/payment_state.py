"""What PaymentIntentWorkflow knows about its payment, the guards every operation passes, and
the money bookkeeping.

Pure: no Temporal commands and no clock (the workflow passes `workflow.now()`), so it is
unit-tested without a server and safe anywhere in workflow code, validators included. Which
moves are legal at all is the state machine's (`core/state_machine.py`); this adds what only
the workflow knows: an operation in flight, the amounts left, and the deadlines.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.persistence import PaymentSnapshot
    from core.domain import CaptureMethod, IntentStatus, TransactionStatus, TransactionType
    from core.errors import ErrorType
    from core.state_machine import (
        IntentAction,
        can_move_intent,
        can_start_charge,
        holds_authorization,
        is_refundable,
    )

from workflows.payment_messages import CarriedState, LifecyclePolicy, Money, UnknownOutcome

# An expiry void the network declined or failed is tried again after 1, 2, 4, 8 minutes; past
# that an operator decides (manual review), instead of a new void every hour for ever.
EXPIRY_VOID_FIRST_RETRY_SECONDS = 60.0
EXPIRY_VOID_MAX_FAILURES = 5


def refused(message: str, kind: str = ErrorType.ILLEGAL_TRANSITION) -> ApplicationError:
    """A refusal the API turns into 409 (or 400 for an amount); never retried."""
    return ApplicationError(message, type=kind, non_retryable=True)


class PaymentState:
    def __init__(
        self,
        carried: CarriedState | None,
        *,
        capture_method: CaptureMethod,
        lifecycle: LifecyclePolicy,
    ) -> None:
        self.capture_method = capture_method
        self.lifecycle = lifecycle
        # A run opened for a capture, cancel or refund after earlier runs closed learns the
        # payment from the database first (`load`); a charge records its own state.
        self.loaded = carried is not None
        carried = carried or CarriedState(IntentStatus.CREATED)
        self.status = carried.status
        self.money = carried.money or Money()
        # The operation whose outcome the network has not told us (or that the database refused
        # to record): status queries on durable timers watch it until it is recorded.
        self.unknown = carried.unknown
        self.review_open = carried.review_open
        self.charging = False  # a charge attempt holds the payment's lock

    # ---- guards: raise the refusal the API answers with ----------------------------------------
    def check_charge(self) -> None:
        if self.charging or self.unknown is not None:
            raise refused("a charge attempt is already in flight", ErrorType.ATTEMPT_IN_FLIGHT)
        if self.loaded and not can_start_charge(self.status):
            raise refused(f"cannot charge a payment intent in status {self.status}")

    def check_capture(self, amount: int | None) -> None:
        self._check_operation(IntentAction.CAPTURE)
        if self.loaded:
            _check_amount(amount, self.money.amount_capturable, "authorized")

    def check_cancel(self) -> None:
        self._check_operation(IntentAction.CANCEL)

    def check_refund(self, amount: int | None, *, now: float) -> None:
        self._check_operation(IntentAction.REFUND_PARTIAL)
        if not self.loaded:
            return  # checked again once the payment is read from the database
        ends_at = self.money.refund_window_ends_at
        if ends_at is not None and now >= ends_at:
            raise refused("the refund window of this payment is over")
        _check_amount(amount, self.refundable(), "left to refund")

    def _check_operation(self, action: IntentAction) -> None:
        if self.unknown is not None or self.charging:
            # Never a second operation under a new reference while one is unknown.
            raise refused("an operation on this payment is in flight", ErrorType.ATTEMPT_IN_FLIGHT)
        if self.loaded and not can_move_intent(self.status, action):
            raise refused(
                f"cannot {action.value.replace('_', ' ')} a payment intent in status {self.status}"
            )

    # ---- bookkeeping ---------------------------------------------------------------------------
    def move_to(self, status: str, *, now: float, authorized_at: float | None = None) -> bool:
        """Track the intent's recorded status; True when it changed. Starts the authorization's
        clock when the network authorized (`authorized_at`, from its answer: an answer
        reconciled an hour late leaves an hour less) and the refund window's on success."""
        changed = status != self.status
        self.status = IntentStatus(status)
        if not changed:  # e.g. a failed expiry void: its retry schedule owns the deadline
            return False
        money = self.money
        if holds_authorization(self.status) and money.authorization_expires_at is None:
            started = now if authorized_at is None else min(authorized_at, now)
            money.authorization_expires_at = started + self.lifecycle.authorization_expiry_seconds
        if is_refundable(self.status) and money.refund_window_ends_at is None:
            money.refund_window_ends_at = now + self.lifecycle.refund_window_seconds
        return True

    def learn(
        self, kind: TransactionType, transaction_id: str, amount: int, transaction_status: str
    ) -> None:
        """Track what the network holds after an operation succeeded."""
        if transaction_status != TransactionStatus.SUCCEEDED.value:
            return
        money = self.money
        if kind is TransactionType.CHARGE:
            money.authorization_reference = transaction_id
            if self.capture_method is CaptureMethod.MANUAL:
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

    def refundable(self) -> int:
        return self.money.amount_received - self.money.amount_refunded

    def load(self, snapshot: PaymentSnapshot) -> None:
        """Learn the payment from the database (a run opened after earlier ones closed)."""
        lifecycle = self.lifecycle
        self.loaded = True
        self.status = IntentStatus(snapshot.status)
        self.money = Money(
            authorization_reference=snapshot.authorization_reference,
            payment_reference=snapshot.payment_reference,
            amount_capturable=snapshot.amount_capturable,
            amount_received=snapshot.amount_received,
            amount_refunded=snapshot.amount_refunded,
            authorization_expires_at=(
                snapshot.authorized_at + lifecycle.authorization_expiry_seconds
                if holds_authorization(self.status) and snapshot.authorized_at is not None
                else None
            ),
            refund_window_ends_at=(
                snapshot.succeeded_at + lifecycle.refund_window_seconds
                if snapshot.succeeded_at is not None
                else None
            ),
        )
        self.review_open = snapshot.in_manual_review
        unsettled = snapshot.unsettled
        if unsettled is not None and self.unknown is None:
            self.unknown = UnknownOutcome(
                unsettled.transaction_id,
                operation=unsettled.type,
                amount_in_cents=unsettled.amount_in_cents,
                in_manual_review=snapshot.in_manual_review,
                reversal_reference=unsettled.reversal_reference,
            )

    # ---- deadlines -------------------------------------------------------------------------------
    def expiry_due(self, now: float) -> bool:
        expires_at = self.money.authorization_expires_at
        return (
            holds_authorization(self.status)
            and self.unknown is None
            and expires_at is not None
            and now >= expires_at
        )

    def next_deadline(self) -> float | None:
        """The unix time (workflow time) at which the run must wake up by itself, if any."""
        if holds_authorization(self.status) and self.unknown is None:
            return self.money.authorization_expires_at
        return None

    def expiry_void_failed(self, *, now: float) -> bool:
        """Count a failed expiry void; True once it is time for an operator to decide."""
        money = self.money
        money.expiry_void_failures += 1
        if money.expiry_void_failures < EXPIRY_VOID_MAX_FAILURES:
            money.authorization_expires_at = now + (
                EXPIRY_VOID_FIRST_RETRY_SECONDS * 2 ** (money.expiry_void_failures - 1)
            )
            return False
        money.authorization_expires_at = None  # no more voids by itself: an operator decides
        return True

    def at_rest(self) -> bool:
        """Nothing in flight, nothing unknown, no authorization held whose expiry must be
        watched: the run may end. A later operation opens a new run (update-with-start), which
        loads the payment from the database."""
        return self.unknown is None and not self.charging and not holds_authorization(self.status)

    def carried(self, *, deliveries: Sequence[str] = ()) -> CarriedState:
        """What the next run starts from, with the webhook deliveries not started yet."""
        return CarriedState(
            self.status, self.unknown, self.money, self.review_open, list(deliveries)
        )


def _check_amount(amount: int | None, allowed: int, what: str) -> None:
    if amount is not None and not 1 <= amount <= allowed:
        raise refused(
            f"amount {amount} is more than the {allowed} {what}", ErrorType.AMOUNT_INVALID
        )
