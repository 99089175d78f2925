"""PaymentIntentWorkflow: one durable process per PaymentIntent.

Its messages and carried state live in `payment_messages.py`, the money bookkeeping and deadline
arithmetic in `payment_money.py` (pure), and each activity call with its timeout and retry in
`payment_calls.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.card_network import AuthorizeInput, NetworkAnswer, OperationRequest
    from activities.persistence import (
        ChargeAttempt,
        ChargeOutcome,
        IntentCancellation,
        IntentState,
        ManualReviewFlag,
        OperationAttempt,
        OperationOutcome,
        OutcomeDiscrepancy,
    )
    from core import search_attributes
    from core.domain import (
        CancellationReason,
        CaptureMethod,
        IntentStatus,
        NetworkOutcome,
        TransactionStatus,
        TransactionType,
        transaction_id_for,
    )
    from core.errors import ErrorType
    from core.state_machine import IntentAction, can_move_intent, can_start_charge

from workflows import payment_calls as calls
from workflows.payment_messages import (
    CancelInput,
    CaptureInput,
    CarriedState,
    ChargeInput,
    ChargeResult,
    LifecyclePolicy,
    ManualReviewResolution,
    Money,
    OperationResult,
    ReconcilePolicy,
    RefundInput,
    UnknownOutcome,
)
from workflows.payment_money import (
    REFUNDABLE_STATUSES,
    arm_deadlines,
    check_amount,
    learn,
    next_deadline,
    refundable,
)
from workflows.payment_outcomes import believed, same_outcome
from workflows.webhook_fanout import dispatch_webhooks

CLOSED_STATUSES = frozenset({IntentStatus.SUCCEEDED, IntentStatus.CANCELED})
# With the lifecycle patch a succeeded payment stays open for refunds; these end it.
FINAL_STATUSES = frozenset({IntentStatus.CANCELED, IntentStatus.REFUNDED})
# An expiry void the network declined or failed is tried again after 1, 2, 4, 8 minutes; past
# that an operator decides (manual review), instead of a new void every hour for ever.
EXPIRY_VOID_FIRST_RETRY_SECONDS = 60.0
EXPIRY_VOID_MAX_FAILURES = 5
# Patches (see tests/workflows/test_replay.py): runs begun before a change replay unchanged.
SEARCH_ATTRIBUTES_PATCH = "upsert-status-search-attributes-2026-11"
MANUAL_REVIEW_PATCH = "manual-review-after-horizon-2026-11"
WEBHOOKS_PATCH = "webhook-fan-out-2026-11"
# Capture, cancel/void, refunds, authorization expiry; the run stays open after `succeeded`.
LIFECYCLE_PATCH = "payment-lifecycle-2026-11"


@dataclass
class PaymentIntentInput:
    payment_intent_id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: CaptureMethod
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    # Past this many history events the run continues as new, carrying its state, so a payment
    # retried with many cards or reconciled for days never grows an unbounded history.
    max_history_events: int = 10_000
    carried: CarriedState | None = None


@dataclass
class PaymentIntentResult:
    status: IntentStatus


@workflow.defn
class PaymentIntentWorkflow:
    """A PaymentIntent's life: charge (or authorize), then capture or void the authorization
    (voided by itself when it expires), then refunds; each operation is recorded before the card
    network is asked and its answer after. An unknown answer is never guessed: durable timers
    drive status queries until the network's truth is known, and past the horizon an operator
    is asked to look. The run ends when the payment is canceled, refunded, or out of refunds' time.
    """

    @workflow.init
    def __init__(self, input: PaymentIntentInput) -> None:
        self._input = input
        carried = input.carried or CarriedState(IntentStatus.CREATED)
        self._status = carried.status
        # The operation whose outcome the network has not told us (or that the database refused
        # to record): status queries on durable timers watch it until it is recorded.
        self._unknown = carried.unknown
        self._charging = False  # a charge attempt holds the lock
        # One operation at a time, from its record to its recorded outcome, reconciliation's
        # settling included: a capture never passes its checks against a void being settled.
        self._lock = asyncio.Lock()
        self._events_dispatched = carried.events_dispatched
        self._webhooks = False  # decided in `run`: runs begun before webhooks send none
        self._dispatch_needed = False
        self._money = carried.money or Money()
        self._review_open = carried.review_open
        self._lifecycle = False  # decided in `run`: runs begun before it end at `succeeded`
        self._refund_window_over = False

    @workflow.run
    async def run(self, input: PaymentIntentInput) -> PaymentIntentResult:
        self._webhooks = workflow.patched(WEBHOOKS_PATCH)
        self._lifecycle = workflow.patched(LIFECYCLE_PATCH)
        self._dispatch_needed = self._webhooks  # `payment.created`, appended by the API
        while True:
            while not self._closed() or self._dispatch_needed:
                await self._wait_for_work()
                if self._dispatch_needed:
                    await self._dispatch_webhooks()
                if self._unknown is not None:
                    await self._reconcile(self._unknown)
                if self._lifecycle:
                    await self._enforce_deadlines()
                if self._history_too_long() and not self._closed():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(self._continued_input())
            # A handler still running (a refund sent just before the window closed) may leave
            # an unknown outcome to reconcile or an event to deliver: look again once all are done.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._closed() and not self._dispatch_needed:
                return PaymentIntentResult(self._status)

    @workflow.update
    async def confirm_charge(self, charge: ChargeInput) -> ChargeResult:
        transaction_id = self._update_transaction_id()
        async with self._lock:
            self._check_can_charge()  # again: a second update may pass the validator first
            self._charging = True
            try:
                return await self._charge(charge, transaction_id)
            finally:
                self._charging = False

    @confirm_charge.validator
    def _validate_charge(self, charge: ChargeInput) -> None:
        self._check_can_charge()

    @workflow.update
    async def capture(self, request: CaptureInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():  # serialized with refunds, cancel, the expiry and settling
            self._check_capture(request)  # again: the state may have moved while queued
            amount = request.amount_in_cents or self._money.amount_capturable
            return await self._operate(TransactionType.CAPTURE, amount,
                                       self._money.authorization_reference, transaction_id)

    @capture.validator
    def _validate_capture(self, request: CaptureInput) -> None:
        self._check_capture(request)

    @workflow.update
    async def cancel(self, request: CancelInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():
            self._check_operation(IntentAction.CANCEL)
            return await self._cancel(request.reason, transaction_id)

    @cancel.validator
    def _validate_cancel(self, request: CancelInput) -> None:
        self._check_operation(IntentAction.CANCEL)

    @workflow.update
    async def refund(self, request: RefundInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        # Concurrent refunds queue here; each one re-checks what is left once it is its turn,
        # so together they never refund more than was received.
        async with self._turn():
            self._check_refund(request)
            amount = request.amount_in_cents or refundable(self._money)
            return await self._operate(TransactionType.REFUND, amount,
                                       self._money.payment_reference, transaction_id)

    @refund.validator
    def _validate_refund(self, request: RefundInput) -> None:
        self._check_refund(request)

    @workflow.update
    async def resolve_manual_review(self, resolution: ManualReviewResolution) -> IntentStatus:
        """An operator's verdict, accepted only where the network has no answer of its own."""
        async with self._lock:
            unknown = self._unknown
            if unknown is None or not unknown.in_manual_review:
                raise ApplicationError("this payment is no longer waiting for a manual review",
                                       type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)
            # Ask the network once more, under the lock: its answer wins over any verdict.
            answer = await calls.query_charge_status(unknown.transaction_id)
            if answer.outcome is not NetworkOutcome.UNKNOWN:
                await self._settle(unknown, answer)
                if not same_outcome(answer.outcome, resolution.outcome):
                    raise ApplicationError(
                        f"the network answered {answer.outcome.value} for "
                        f"{unknown.transaction_id}: the payment is settled as the network says "
                        f"and the verdict {resolution.outcome.value} was not recorded",
                        type=ErrorType.VERDICT_CONTRADICTS_NETWORK, non_retryable=True)
                return self._status
            await self._settle(unknown, NetworkAnswer(resolution.outcome),
                               failure_code="manual_review")
            workflow.logger.warning("manual review of %s resolved as %s: %s",
                                    unknown.transaction_id, resolution.outcome, resolution.note)
            return self._status

    @resolve_manual_review.validator
    def _validate_resolution(self, resolution: ManualReviewResolution) -> None:
        if self._unknown is None or not self._unknown.in_manual_review:
            raise ApplicationError("this payment is not waiting for a manual review",
                                   type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)
        if resolution.outcome not in (NetworkOutcome.APPROVED, NetworkOutcome.FAILED):
            raise ApplicationError("a review resolves to approved or failed",
                                   type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)

    @workflow.query
    def current_status(self) -> IntentStatus:
        return self._status

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The lock, for an accepted capture, cancel or refund: it waits until no operation runs
        and none is unknown (reconciliation included), then re-checks its own move. Failing it
        instead would store the refusal under its Update id, and the merchant's retry with the
        same Idempotency-Key would get that refusal for ever."""
        while True:
            await workflow.wait_condition(
                lambda: (self._unknown is None and not self._lock.locked())
                or self._history_too_long())
            if self._history_too_long():  # the run is about to continue as new: retry there
                raise ApplicationError("an operation on this payment is in flight",
                                       type=ErrorType.ATTEMPT_IN_FLIGHT, non_retryable=True)
            await self._lock.acquire()
            if self._unknown is None:
                break
            self._lock.release()  # another queued operation went first and is now unknown
        try:
            yield
        finally:
            self._lock.release()

    # ---- steps ---------------------------------------------------------------------------------
    async def _charge(self, charge: ChargeInput, transaction_id: str) -> ChargeResult:
        state = await calls.record_charge_attempt(ChargeAttempt(
            self._input.payment_intent_id, transaction_id, charge.card_token_id, charge.card))
        self._set_status(state.status)
        answer = await calls.authorize_card(AuthorizeInput(
            transaction_id, charge.card_token_id, self._input.amount_in_cents,
            self._input.currency, capture=self._input.capture_method is CaptureMethod.AUTOMATIC))
        state = await self._record_answer(UnknownOutcome(transaction_id), answer)
        return ChargeResult(transaction_id, state.transaction_status, self._status,
                            answer.decline_code)

    async def _operate(self, kind: TransactionType, amount: int, parent_reference: str | None,
                       transaction_id: str, *, reason: str | None = None) -> OperationResult:
        """Record a capture/void/refund under its own reference, send it, record the answer."""
        assert parent_reference is not None  # the state machine allowed it: the parent exists
        await calls.record_operation_attempt(OperationAttempt(
            self._input.payment_intent_id, transaction_id, kind, amount, parent_reference))
        answer = await calls.send_operation(kind, OperationRequest(
            transaction_id, parent_reference, amount, self._input.currency))
        state = await self._record_answer(UnknownOutcome(
            transaction_id, operation=kind, amount_in_cents=amount, cancellation_reason=reason),
            answer)
        return OperationResult(self._status, transaction_id, state.transaction_status,
                               answer.decline_code)

    async def _cancel(self, reason: str, transaction_id: str) -> OperationResult:
        if self._status is IntentStatus.REQUIRES_CAPTURE:
            return await self._operate(TransactionType.VOID, self._money.amount_capturable,
                                       self._money.authorization_reference, transaction_id,
                                       reason=reason)
        # No successful charge: nothing is held at the network, only the record changes.
        state = await calls.cancel_payment_intent(
            IntentCancellation(self._input.payment_intent_id, reason))
        self._set_status(state.status)
        return OperationResult(self._status)

    async def _record_answer(self, operation: UnknownOutcome, answer: NetworkAnswer, *,
                             reconciled: bool = False,
                             failure_code: str | None = None) -> IntentState:
        """Record the network's answer (or an operator's verdict) for one operation and learn
        what it did to the money. An unknown answer, or one the database refuses to record, is
        left to `_reconcile`: status queries on durable timers watch it, never a guess."""
        if answer.outcome is NetworkOutcome.FAILED and failure_code is None:
            failure_code = "processing_error"
        try:
            if operation.operation is TransactionType.CHARGE:
                state = await calls.record_charge_outcome(ChargeOutcome(
                    self._input.payment_intent_id, operation.transaction_id, answer.outcome,
                    decline_code=answer.decline_code, failure_code=failure_code,
                    reconciled=reconciled))
            else:
                state = await calls.record_operation_outcome(OperationOutcome(
                    self._input.payment_intent_id, operation.transaction_id, answer.outcome,
                    decline_code=answer.decline_code, failure_code=failure_code,
                    reconciled=reconciled, cancellation_reason=operation.cancellation_reason))
        except ActivityError as error:
            # Not retried (the database will never accept it): keep the operation watched and
            # put it in front of an operator now.
            workflow.logger.error("the answer %s for %s could not be recorded: %s",
                                  answer.outcome, operation.transaction_id, error.cause)
            self._unknown = self._unknown or operation
            if not self._unknown.in_manual_review:
                await self._flag_for_manual_review(self._unknown)
            return IntentState(self._status, TransactionStatus.PENDING.value)
        self._set_status(state.status, network_time=answer.network_time)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            self._unknown = operation
        if state.event_appended and self._webhooks:
            self._dispatch_needed = True  # e.g. a second partial refund: same status, new event
        if answer.outcome is not NetworkOutcome.UNKNOWN:
            operation.settled_as = answer.outcome
            self._close_review()
        amount = (self._input.amount_in_cents if operation.operation is TransactionType.CHARGE
                  else operation.amount_in_cents)
        learn(self._money, operation.operation, operation.transaction_id, amount,
              state.transaction_status,
              manual_capture=self._input.capture_method is CaptureMethod.MANUAL)
        return state

    async def _enforce_deadlines(self) -> None:
        """The authorization's expiry (void it, cancel as `expired`) and the refund window's end.

        Under the lock, so a capture racing the expiry is serialized: whichever runs first
        wins, and the other sees the new state.
        """
        now = workflow.now().timestamp()
        money = self._money
        expires_at = money.authorization_expires_at
        if (self._status is IntentStatus.REQUIRES_CAPTURE and self._unknown is None
                and expires_at is not None and now >= expires_at):
            async with self._lock:
                if self._status is IntentStatus.REQUIRES_CAPTURE and self._unknown is None:
                    workflow.logger.info("authorization of %s expired: voiding it",
                                         self._input.payment_intent_id)
                    result = await self._cancel(CancellationReason.EXPIRED.value,
                                                f"txn_{workflow.uuid4().hex[:24]}")
                    if result.transaction_status == TransactionStatus.FAILED.value:
                        await self._expiry_void_failed(result.transaction_id)
        ends_at = money.refund_window_ends_at
        if self._status in REFUNDABLE_STATUSES and ends_at is not None and now >= ends_at:
            self._refund_window_over = True

    async def _expiry_void_failed(self, transaction_id: str | None) -> None:
        """Not voided (the network declined or failed): try again with backoff, to a bound, then
        ask an operator; meanwhile the failed void is on the payment for everyone to see."""
        money = self._money
        money.expiry_void_failures += 1
        if money.expiry_void_failures < EXPIRY_VOID_MAX_FAILURES:
            money.authorization_expires_at = workflow.now().timestamp() + (
                EXPIRY_VOID_FIRST_RETRY_SECONDS * 2 ** (money.expiry_void_failures - 1))
            return
        money.authorization_expires_at = None  # no more voids by itself: an operator decides
        workflow.logger.error("authorization of %s could not be voided after %d tries: manual "
                              "review", self._input.payment_intent_id,
                              money.expiry_void_failures)
        await calls.flag_for_manual_review(ManualReviewFlag(
            self._input.payment_intent_id, transaction_id or "", 0.0,
            reason="expired authorization could not be voided"))
        self._open_review()

    async def _reconcile(self, unknown: UnknownOutcome) -> None:
        """Durable timers drive status queries until the network says what it decided.

        Returns when the outcome is settled (here or by an operator), or when the history is due
        to continue as new (the loop's position travels in `unknown`).
        """
        policy = self._input.reconcile
        while self._unknown is unknown and not self._history_too_long():
            if unknown.waited_seconds >= policy.horizon_seconds and not unknown.in_manual_review:
                if not workflow.patched(MANUAL_REVIEW_PATCH):
                    await workflow.wait_condition(lambda: False)  # how runs before it waited
                await self._flag_for_manual_review(unknown)
            delay = unknown.next_delay_seconds or policy.first_delay_seconds
            await workflow.sleep(timedelta(seconds=delay))
            unknown.waited_seconds += delay
            unknown.next_delay_seconds = min(delay * 2, policy.max_delay_seconds)
            answer = believed(await calls.query_charge_status(unknown.transaction_id),
                              waited_seconds=unknown.waited_seconds, policy=policy)
            if answer.outcome is NetworkOutcome.UNKNOWN:
                continue
            async with self._lock:
                if self._unknown is unknown:
                    await self._settle(unknown, answer)
                elif unknown.settled_as is not None and not same_outcome(answer.outcome,
                                                                         unknown.settled_as):
                    await self._report_contradiction(unknown, answer.outcome)

    async def _settle(self, unknown: UnknownOutcome, answer: NetworkAnswer, *,
                      failure_code: str | None = None) -> None:
        """Record the truth about an unknown outcome; it stays watched if the record fails."""
        state = await self._record_answer(unknown, answer, reconciled=True,
                                          failure_code=failure_code)
        if state.transaction_status != TransactionStatus.PENDING.value:
            self._unknown = None

    async def _report_contradiction(self, unknown: UnknownOutcome,
                                    network: NetworkOutcome) -> None:
        """A late answer of the network contradicts what was recorded (an operator's verdict):
        never overwritten, always put in front of operators."""
        assert unknown.settled_as is not None
        workflow.logger.error("the network answered %s for %s, recorded as %s: discrepancy",
                              network, unknown.transaction_id, unknown.settled_as)
        await calls.record_outcome_discrepancy(OutcomeDiscrepancy(
            self._input.payment_intent_id, unknown.transaction_id, recorded=unknown.settled_as,
            network=network))

    async def _flag_for_manual_review(self, unknown: UnknownOutcome) -> None:
        """Past the horizon (or refused by the database): flag it for operators, loudly, and
        keep querying the network."""
        workflow.logger.error("outcome of %s still unknown after %.0f s: manual review",
                              unknown.transaction_id, unknown.waited_seconds)
        await calls.flag_for_manual_review(ManualReviewFlag(
            self._input.payment_intent_id, unknown.transaction_id, unknown.waited_seconds))
        unknown.in_manual_review = True
        self._open_review()

    async def _dispatch_webhooks(self) -> None:
        """Start the deliveries of the events recorded since the last dispatch (children that
        outlive this run). Runs in the main loop, so a charge's answer never waits for it."""
        self._dispatch_needed = False
        self._events_dispatched = await dispatch_webhooks(self._input.payment_intent_id,
                                                          self._events_dispatched)

    # ---- state ---------------------------------------------------------------------------------
    def _set_status(self, status: str, *, network_time: float | None = None) -> None:
        """Track the intent's status and show it to operators (Web UI search attribute).

        Every status change appended an event in the same database transaction, so it is also
        the moment to fan that event out to the merchant's webhook endpoints.
        """
        changed = status != self._status
        self._status = IntentStatus(status)
        if changed:
            arm_deadlines(self._money, self._status, self._input.lifecycle,
                          workflow.now().timestamp(), authorized_at=network_time)
        if changed and workflow.patched(SEARCH_ATTRIBUTES_PATCH):
            workflow.upsert_search_attributes([search_attributes.STATUS.value_set(status)])
        if changed and self._webhooks:
            self._dispatch_needed = True

    def _open_review(self) -> None:
        self._review_open = True
        workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(True)])

    def _close_review(self) -> None:
        """The database closed the review with the outcome it recorded; so does the Web UI."""
        if self._review_open:
            self._review_open = False
            workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(False)])

    def _update_transaction_id(self) -> str:
        """The id the API derived from this Update's id (see `transaction_id_for`)."""
        info = workflow.current_update_info()
        assert info is not None  # called first thing in an update handler
        return transaction_id_for(self._input.payment_intent_id, info.id)

    def _check_operation(self, action: IntentAction) -> None:
        if self._unknown is not None or self._charging:
            # Never a second operation under a new reference while one is unknown.
            raise ApplicationError("an operation on this payment is in flight",
                                   type=ErrorType.ATTEMPT_IN_FLIGHT, non_retryable=True)
        if not can_move_intent(self._status, action) or (
                action is IntentAction.REFUND_PARTIAL and self._refund_window_over):
            raise ApplicationError(
                f"cannot {action.value.replace('_', ' ')} a payment intent in status "
                f"{self._status}", type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)

    def _check_capture(self, request: CaptureInput) -> None:
        self._check_operation(IntentAction.CAPTURE)
        check_amount(request.amount_in_cents, self._money.amount_capturable, "authorized")

    def _check_refund(self, request: RefundInput) -> None:
        self._check_operation(IntentAction.REFUND_PARTIAL)
        check_amount(request.amount_in_cents, refundable(self._money), "left to refund")

    async def _wait_for_work(self) -> None:
        def ready() -> bool:
            return (self._unknown is not None or self._dispatch_needed or self._closed()
                    or self._history_too_long())

        deadline = (next_deadline(self._money, self._status,
                                  refund_window_over=self._refund_window_over)
                    if self._lifecycle and self._unknown is None else None)
        if deadline is None:
            await workflow.wait_condition(ready)
            return
        wait = max(deadline - workflow.now().timestamp(), 0.001)
        try:
            await workflow.wait_condition(ready, timeout=timedelta(seconds=wait))
        except TimeoutError:
            pass  # the deadline: `_enforce_deadlines` acts on it

    def _check_can_charge(self) -> None:
        if self._charging or self._unknown is not None:
            raise ApplicationError("a charge attempt is already in flight",
                                   type=ErrorType.ATTEMPT_IN_FLIGHT, non_retryable=True)
        if not can_start_charge(self._status):
            raise ApplicationError(f"cannot charge a payment intent in status {self._status}",
                                   type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)

    def _closed(self) -> bool:
        if not self._lifecycle:
            return self._status in CLOSED_STATUSES
        if self._unknown is not None:
            return False
        return self._status in FINAL_STATUSES or self._refund_window_over

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return (info.is_continue_as_new_suggested()
                or info.get_current_history_length() >= self._input.max_history_events)

    def _continued_input(self) -> PaymentIntentInput:
        return PaymentIntentInput(
            self._input.payment_intent_id, self._input.merchant_id, self._input.amount_in_cents,
            self._input.currency, self._input.capture_method, self._input.reconcile,
            self._input.lifecycle, self._input.max_history_events,
            CarriedState(self._status, self._unknown, self._events_dispatched, self._money,
                         self._review_open))
