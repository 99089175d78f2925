"""PaymentIntentWorkflow: the payment flow of one PaymentIntent.

A charge (or authorization) is recorded, sent to the card network, and its answer recorded; an
authorization is then captured or voided (by itself when it expires), and a payment refunded.
An answer the network did not give is never guessed: durable timers drive status queries until
it is known, and past the horizon an operator is asked to look.

A run lasts while the payment needs watching (an operation in flight, an unknown outcome, an
authorization that will expire) and ends once it is at rest. The next operation opens a new
run with update-with-start, which reads the payment from the database first: a settled payment
costs no open workflow for its refund window.

State and guards: `payment_state.py`; activity calls with their timeouts and retries:
`payment_calls.py`; messages: `payment_messages.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.card_network import AuthorizeInput, NetworkAnswer, OperationRequest
    from activities.persistence import (
        ChargeAttempt,
        IntentCancellation,
        ManualReviewFlag,
        OperationAttempt,
        Outcome,
        OutcomeDiscrepancy,
        Recorded,
    )
    from core import search_attributes
    from core.domain import (
        CancellationReason,
        CaptureMethod,
        IntentStatus,
        NetworkOutcome,
        RecordedTransaction,
        TransactionStatus,
        TransactionType,
        transaction_id_for,
    )
    from core.errors import ErrorType
    from core.state_machine import holds_authorization
    from core.webhooks import WebhookSchedule

from workflows import payment_calls as calls
from workflows.payment_messages import (
    CancelInput,
    CaptureInput,
    CarriedState,
    ChargeInput,
    ChargeResult,
    LifecyclePolicy,
    ManualReviewResolution,
    OperationResult,
    ReconcilePolicy,
    RefundInput,
    UnknownOutcome,
)
from workflows.payment_outcomes import believed, same_outcome
from workflows.payment_state import PaymentState, refused
from workflows.webhook_fanout import start_deliveries


@dataclass
class PaymentIntentInput:
    payment_intent_id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: CaptureMethod
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    webhooks: WebhookSchedule = field(default_factory=WebhookSchedule)
    # Past this many history events the run continues as new, carrying its state, so a payment
    # reconciled for days never grows an unbounded history.
    max_history_events: int = 10_000
    carried: CarriedState | None = None


@dataclass
class PaymentIntentResult:
    status: IntentStatus


@workflow.defn
class PaymentIntentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentIntentInput) -> None:
        self._input = input
        self._state = PaymentState(input.carried, capture_method=input.capture_method,
                                   lifecycle=input.lifecycle)
        # One operation at a time, from its record to its recorded outcome, reconciliation's
        # settling included: a capture never passes its checks against a void being settled.
        self._lock = asyncio.Lock()
        self._deliveries: list[str] = []  # planned with their events, not started yet

    @workflow.run
    async def run(self, input: PaymentIntentInput) -> PaymentIntentResult:
        while True:
            await self._wait_for_work()
            if self._deliveries:
                deliveries, self._deliveries = self._deliveries, []
                await start_deliveries(deliveries, input.webhooks)
            if self._state.unknown is not None:
                await self._reconcile(self._state.unknown)
            if self._state.expiry_due(workflow.now().timestamp()):
                await self._void_expired_authorization()
            if self._history_too_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._continued_input())
            if self._at_rest():
                return PaymentIntentResult(self._state.status)

    @workflow.update
    async def confirm_charge(self, charge: ChargeInput) -> ChargeResult:
        transaction_id = self._update_transaction_id()
        async with self._lock:
            self._state.check_charge()  # again: a second Update may pass the validator first
            self._state.charging = True
            try:
                return await self._charge(charge, transaction_id)
            finally:
                self._state.charging = False

    @confirm_charge.validator
    def _validate_charge(self, charge: ChargeInput) -> None:
        self._state.check_charge()

    @workflow.update
    async def capture(self, request: CaptureInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():
            self._state.check_capture(request.amount_in_cents)  # the state may have moved
            money = self._state.money
            return await self._operate(TransactionType.CAPTURE,
                                       request.amount_in_cents or money.amount_capturable,
                                       money.authorization_reference, transaction_id)

    @capture.validator
    def _validate_capture(self, request: CaptureInput) -> None:
        self._state.check_capture(request.amount_in_cents)

    @workflow.update
    async def cancel(self, request: CancelInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():
            self._state.check_cancel()
            return await self._cancel(request.reason, transaction_id)

    @cancel.validator
    def _validate_cancel(self, request: CancelInput) -> None:
        self._state.check_cancel()

    @workflow.update
    async def refund(self, request: RefundInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        # Concurrent refunds queue here; each one re-checks what is left once it is its turn,
        # so together they never refund more than was received.
        async with self._turn():
            self._state.check_refund(request.amount_in_cents, now=workflow.now().timestamp())
            return await self._operate(TransactionType.REFUND,
                                       request.amount_in_cents or self._state.refundable(),
                                       self._state.money.payment_reference, transaction_id)

    @refund.validator
    def _validate_refund(self, request: RefundInput) -> None:
        self._state.check_refund(request.amount_in_cents, now=workflow.now().timestamp())

    @workflow.update
    async def resolve_manual_review(self, resolution: ManualReviewResolution) -> IntentStatus:
        """An operator's verdict, accepted only where the network has no answer of its own."""
        async with self._lock:
            unknown = self._state.unknown
            if unknown is None or not unknown.in_manual_review:
                raise refused("this payment is no longer waiting for a manual review")
            # Ask the network once more, under the lock: its answer wins over any verdict.
            answer = await calls.query_charge_status(unknown.transaction_id)
            if answer.outcome is not NetworkOutcome.UNKNOWN:
                await self._settle(unknown, answer)
                if not same_outcome(answer.outcome, resolution.outcome):
                    raise refused(
                        f"the network answered {answer.outcome.value} for "
                        f"{unknown.transaction_id}: the payment is settled as the network says "
                        f"and the verdict {resolution.outcome.value} was not recorded",
                        ErrorType.VERDICT_CONTRADICTS_NETWORK)
                return self._state.status
            await self._settle(unknown, NetworkAnswer(resolution.outcome),
                               failure_code="manual_review")
            workflow.logger.warning("manual review of %s resolved as %s: %s",
                                    unknown.transaction_id, resolution.outcome, resolution.note)
            return self._state.status

    @resolve_manual_review.validator
    def _validate_resolution(self, resolution: ManualReviewResolution) -> None:
        if self._state.unknown is None or not self._state.unknown.in_manual_review:
            raise refused("this payment is not waiting for a manual review")
        if resolution.outcome not in (NetworkOutcome.APPROVED, NetworkOutcome.FAILED):
            raise refused("a review resolves to approved or failed")

    @workflow.query
    def current_status(self) -> IntentStatus:
        return self._state.status

    # ---- the flow ------------------------------------------------------------------------------
    async def _charge(self, charge: ChargeInput, transaction_id: str) -> ChargeResult:
        recorded = await calls.record_charge_attempt(ChargeAttempt(
            self._input.payment_intent_id, transaction_id, charge.card_token_id, charge.card))
        self._note(recorded)
        self._state.loaded = True  # a charge starts where no money has moved: nothing to load
        earlier = self._answered_before(recorded, UnknownOutcome(transaction_id))
        if earlier is not None:
            return ChargeResult(self._state.status, earlier)
        answer = await calls.authorize_card(AuthorizeInput(
            transaction_id, charge.card_token_id, self._input.amount_in_cents,
            self._input.currency, capture=self._input.capture_method is CaptureMethod.AUTOMATIC))
        operation = UnknownOutcome(transaction_id)
        txn = await self._record_answer(operation, answer) or self._unrecorded(operation)
        return ChargeResult(self._state.status, txn)

    async def _operate(self, kind: TransactionType, amount: int, parent_reference: str | None,
                       transaction_id: str, *, reason: str | None = None) -> OperationResult:
        """Record a capture/void/refund under its own reference, send it, record the answer."""
        assert parent_reference is not None  # the state machine allowed it: the parent exists
        operation = UnknownOutcome(transaction_id, operation=kind, amount_in_cents=amount,
                                   cancellation_reason=reason)
        recorded = await calls.record_operation_attempt(OperationAttempt(
            self._input.payment_intent_id, transaction_id, kind, amount, parent_reference))
        earlier = self._answered_before(recorded, operation)
        if earlier is not None:
            return OperationResult(self._state.status, earlier)
        answer = await calls.send_operation(kind, OperationRequest(
            transaction_id, parent_reference, amount, self._input.currency))
        txn = await self._record_answer(operation, answer) or self._unrecorded(operation)
        return OperationResult(self._state.status, txn)

    async def _cancel(self, reason: str, transaction_id: str) -> OperationResult:
        if holds_authorization(self._state.status):
            return await self._operate(TransactionType.VOID, self._state.money.amount_capturable,
                                       self._state.money.authorization_reference,
                                       transaction_id, reason=reason)
        # No successful charge: nothing is held at the network, only the record changes.
        self._note(await calls.cancel_payment_intent(
            IntentCancellation(self._input.payment_intent_id, reason)))
        return OperationResult(self._state.status)

    async def _record_answer(self, operation: UnknownOutcome, answer: NetworkAnswer, *,
                             reconciled: bool = False,
                             failure_code: str | None = None) -> RecordedTransaction | None:
        """Record the network's answer (or an operator's verdict) for one operation and learn
        what it did to the money. An unknown answer, or one the database refuses to record
        (then None), is left to `_reconcile`: status queries on durable timers watch it."""
        if answer.outcome is NetworkOutcome.FAILED and failure_code is None:
            failure_code = "processing_error"
        try:
            recorded = await calls.record_outcome(Outcome(
                self._input.payment_intent_id, operation.transaction_id, answer.outcome,
                decline_code=answer.decline_code, failure_code=failure_code,
                reconciled=reconciled, cancellation_reason=operation.cancellation_reason))
        except calls.RECORD_FAILURES as error:
            # Not retried (the database will never accept it): keep the operation watched and
            # put it in front of an operator now.
            workflow.logger.error("the answer %s for %s could not be recorded: %s",
                                  answer.outcome, operation.transaction_id, error)
            self._state.unknown = self._state.unknown or operation
            if not self._state.unknown.in_manual_review:
                await self._flag_for_manual_review(self._state.unknown)
            return None
        self._note(recorded, network_time=answer.network_time)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            self._state.unknown = operation
        else:
            operation.settled_as = answer.outcome
            self._close_review()
        txn = recorded.transaction
        assert txn is not None  # an outcome is always about its transaction
        amount = (self._input.amount_in_cents if operation.operation is TransactionType.CHARGE
                  else operation.amount_in_cents)
        self._state.learn(operation.operation, operation.transaction_id, amount, txn.status)
        return txn

    def _unrecorded(self, operation: UnknownOutcome) -> RecordedTransaction:
        """An operation whose answer the database refused: pending to the merchant (202)
        while an operator looks."""
        amount = (self._input.amount_in_cents if operation.operation is TransactionType.CHARGE
                  else operation.amount_in_cents)
        return RecordedTransaction(operation.transaction_id, operation.operation.value,
                                   TransactionStatus.PENDING.value, amount)

    def _answered_before(self, recorded: Recorded,
                         operation: UnknownOutcome) -> RecordedTransaction | None:
        """The same Update already ran in an earlier run (the API retried it after a crash):
        its recorded answer stands, and nothing is sent again."""
        txn = recorded.transaction
        if txn is None or txn.status == TransactionStatus.PENDING.value:
            return None
        if txn.status == TransactionStatus.TIMEOUT.value:
            self._state.unknown = self._state.unknown or operation
        return txn

    async def _void_expired_authorization(self) -> None:
        """Under the lock, so a capture racing the expiry is serialized: whichever runs first
        wins, and the other sees the new state."""
        async with self._lock:
            if not self._state.expiry_due(workflow.now().timestamp()):
                return
            workflow.logger.info("authorization of %s expired: voiding it",
                                 self._input.payment_intent_id)
            result = await self._cancel(CancellationReason.EXPIRED.value,
                                        f"txn_{workflow.uuid4().hex[:24]}")
            txn = result.transaction
            if txn is None or txn.status != TransactionStatus.FAILED.value:
                return
            # Not voided (declined or failed): again with backoff, to a bound, then an operator.
            if self._state.expiry_void_failed(now=workflow.now().timestamp()):
                workflow.logger.error("authorization of %s could not be voided after %d tries: "
                                      "manual review", self._input.payment_intent_id,
                                      self._state.money.expiry_void_failures)
                await calls.flag_for_manual_review(ManualReviewFlag(
                    self._input.payment_intent_id, txn.id, 0.0,
                    reason="expired authorization could not be voided"))
                self._open_review()

    async def _reconcile(self, unknown: UnknownOutcome) -> None:
        """Durable timers drive status queries until the network says what it decided.

        Returns when the outcome is settled (here or by an operator), or when the history is due
        to continue as new (the loop's position travels in `unknown`).
        """
        policy = self._input.reconcile
        while self._state.unknown is unknown and not self._history_too_long():
            if unknown.waited_seconds >= policy.horizon_seconds and not unknown.in_manual_review:
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
                if self._state.unknown is unknown:
                    await self._settle(unknown, answer)
                elif unknown.settled_as is not None and not same_outcome(answer.outcome,
                                                                         unknown.settled_as):
                    await self._report_contradiction(unknown, answer.outcome)

    async def _settle(self, unknown: UnknownOutcome, answer: NetworkAnswer, *,
                      failure_code: str | None = None) -> None:
        """Record the truth about an unknown outcome; it stays watched if the record fails."""
        if await self._record_answer(unknown, answer, reconciled=True,
                                     failure_code=failure_code) is not None:
            self._state.unknown = None

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

    # ---- bookkeeping ---------------------------------------------------------------------------
    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The lock, for an accepted capture, cancel or refund: it waits until no operation runs
        and none is unknown (reconciliation included), then re-checks its own move. Failing it
        instead would store the refusal under its Update id, and the merchant's retry with the
        same Idempotency-Key would get that refusal for ever. A run opened for this operation
        first reads the payment from the database."""
        while True:
            await workflow.wait_condition(
                lambda: (self._state.unknown is None and not self._lock.locked())
                or self._history_too_long())
            if self._history_too_long():  # the run is about to continue as new: retry there
                raise refused("an operation on this payment is in flight",
                              ErrorType.ATTEMPT_IN_FLIGHT)
            await self._lock.acquire()
            if not self._state.loaded:
                self._state.load(await calls.load_payment(self._input.payment_intent_id))
            if self._state.unknown is None:
                break
            self._lock.release()  # another operation went first, or one was left unknown
        try:
            yield
        finally:
            self._lock.release()

    def _note(self, recorded: Recorded, *, network_time: float | None = None) -> None:
        """Learn the status the database recorded, show a change to operators (the Web UI's
        status search attribute, once per change), and queue the webhook deliveries planned
        with its event for the main loop, so an answer never waits for them."""
        if self._state.move_to(recorded.status, now=workflow.now().timestamp(),
                               authorized_at=network_time):
            workflow.upsert_search_attributes([search_attributes.STATUS.value_set(
                recorded.status)])
        self._deliveries.extend(recorded.deliveries)

    def _open_review(self) -> None:
        self._state.review_open = True
        workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(True)])

    def _close_review(self) -> None:
        """The database closed the review with the outcome it recorded; so does the Web UI."""
        if self._state.review_open:
            self._state.review_open = False
            workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(False)])

    def _update_transaction_id(self) -> str:
        """The id the API derived from this Update's id (see `transaction_id_for`)."""
        info = workflow.current_update_info()
        assert info is not None  # called first thing in an update handler
        return transaction_id_for(self._input.payment_intent_id, info.id)

    async def _wait_for_work(self) -> None:
        """Until there is something to do, the run may end, or the authorization expires."""
        deadline = self._state.next_deadline()

        def ready() -> bool:
            return (bool(self._deliveries) or self._state.unknown is not None
                    or self._at_rest() or self._history_too_long()
                    or self._state.next_deadline() != deadline)  # e.g. just authorized

        timeout = (None if deadline is None
                   else timedelta(seconds=max(deadline - workflow.now().timestamp(), 0.001)))
        try:
            await workflow.wait_condition(ready, timeout=timeout)
        except TimeoutError:
            pass  # the deadline: the main loop acts on it

    def _at_rest(self) -> bool:
        return (self._state.at_rest() and not self._deliveries
                and workflow.all_handlers_finished())

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return (info.is_continue_as_new_suggested()
                or info.get_current_history_length() >= self._input.max_history_events)

    def _continued_input(self) -> PaymentIntentInput:
        return PaymentIntentInput(
            self._input.payment_intent_id, self._input.merchant_id, self._input.amount_in_cents,
            self._input.currency, self._input.capture_method, self._input.reconcile,
            self._input.lifecycle, self._input.webhooks, self._input.max_history_events,
            self._state.carried())
