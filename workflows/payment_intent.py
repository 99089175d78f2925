"""PaymentIntentWorkflow: the payment flow of one PaymentIntent.

A charge (or authorization) is recorded, sent to the card network, and its answer recorded; an
authorization is then captured or voided (by itself when it expires), and a payment refunded.
An answer the network did not give is never guessed: durable timers drive status queries until
it is known, and past the horizon an operator is asked to look.

A run lasts while the payment needs watching (an operation in flight, an unknown outcome, an
authorization that will expire) and ends once it is at rest. The next operation opens a new
run with update-with-start, which reads the payment from the database first: a settled payment
costs no open workflow for its refund window. A run about to end without having read it reads
it too, so an attempt left unsettled (its record committed, its Update lost) is watched like
any unknown outcome, whatever started the run.

What the workflow knows and the guards of every operation: `payment_state.py`; how answers are
recorded and shown to operators: `payment_book.py`; activity calls with their timeouts and
retries: `payment_calls.py`; input, messages and carried state: `payment_messages.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.card_network import AuthorizeInput, NetworkAnswer, OperationRequest
    from activities.persistence import (
        ChargeAttempt,
        IntentCancellation,
        OperationAttempt,
        ReversalAttempt,
    )
    from core.codec import PAYLOAD_REFUSED
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
    from core.metrics import count_refused_payload
    from core.state_machine import holds_authorization

    # Our own workflow helpers are deterministic: passed through, a sandboxed run does not
    # re-import them (measured: about a fifth of a sandboxed charge's worker time).
    from workflows import payment_calls as calls
    from workflows.payment_book import PaymentBook
    from workflows.payment_messages import (
        Address,
        CancelInput,
        CaptureInput,
        ChargeInput,
        ChargeResult,
        ManualReviewResolution,
        OperationResult,
        PaymentIntentInput,
        PaymentIntentResult,
        RefundInput,
        UnknownOutcome,
    )
    from workflows.payment_outcomes import (
        believed,
        reversal_due,
        reversal_reference_for,
        same_outcome,
    )
    from workflows.payment_state import PaymentState, refused
    from workflows.webhook_fanout import start_deliveries


@workflow.defn
class PaymentIntentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentIntentInput) -> None:
        self._input = input
        self._state = PaymentState(
            input.carried, capture_method=input.capture_method, lifecycle=input.lifecycle
        )
        # One operation at a time, from its record to its recorded outcome, reconciliation's
        # settling included: a capture never passes its checks against a void being settled.
        self._lock = asyncio.Lock()
        self._book = PaymentBook(
            input.payment_intent_id, input.amount_in_cents, self._state, currency=input.currency
        )
        if input.carried is not None:
            self._book.deliveries.extend(input.carried.deliveries)

    @workflow.run
    async def run(self, input: PaymentIntentInput) -> PaymentIntentResult:
        if not self._start_is_genuine():
            raise ApplicationError(
                "this run's input was not written for it", type=PAYLOAD_REFUSED, non_retryable=True
            )
        while True:
            await self._wait_for_work()
            if self._book.deliveries:
                deliveries, self._book.deliveries = self._book.deliveries, []
                await start_deliveries(deliveries, input.webhooks)
            if self._state.unknown is not None:
                await self._reconcile(self._state.unknown)
            if self._state.expiry_due(workflow.now().timestamp()):
                await self._void_expired_authorization()
            if self._history_too_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._continued_input())
            if self._at_rest():
                if self._state.loaded:
                    return PaymentIntentResult(self._state.status)
                # Never read the payment: an attempt may be pending whose Update was lost
                # after its record committed. Watched here, like any unknown outcome.
                async with self._lock:
                    await self._load()

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
        self._check_addressed(charge.address)
        self._state.check_charge()

    @workflow.update
    async def capture(self, request: CaptureInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():
            self._state.check_capture(request.amount_in_cents)  # the state may have moved
            money = self._state.money
            return await self._operate(
                TransactionType.CAPTURE,
                request.amount_in_cents or money.amount_capturable,
                money.authorization_reference,
                transaction_id,
            )

    @capture.validator
    def _validate_capture(self, request: CaptureInput) -> None:
        self._check_addressed(request.address)
        self._state.check_capture(request.amount_in_cents)

    @workflow.update
    async def cancel(self, request: CancelInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        async with self._turn():
            self._state.check_cancel()
            return await self._cancel(request.reason, transaction_id)

    @cancel.validator
    def _validate_cancel(self, request: CancelInput) -> None:
        self._check_addressed(request.address)
        self._state.check_cancel()

    @workflow.update
    async def refund(self, request: RefundInput) -> OperationResult:
        transaction_id = self._update_transaction_id()
        # Concurrent refunds queue here; each one re-checks what is left once it is its turn,
        # so together they never refund more than was received.
        async with self._turn():
            self._state.check_refund(request.amount_in_cents, now=workflow.now().timestamp())
            return await self._operate(
                TransactionType.REFUND,
                request.amount_in_cents or self._state.refundable(),
                self._state.money.payment_reference,
                transaction_id,
            )

    @refund.validator
    def _validate_refund(self, request: RefundInput) -> None:
        self._check_addressed(request.address)
        self._state.check_refund(request.amount_in_cents, now=workflow.now().timestamp())

    @workflow.update
    async def resolve_manual_review(self, resolution: ManualReviewResolution) -> IntentStatus:
        """An operator's verdict, accepted only where the network has no answer of its own."""
        async with self._lock:
            await self._book.resolve_review(resolution)
            return self._state.status

    @resolve_manual_review.validator
    def _validate_resolution(self, resolution: ManualReviewResolution) -> None:
        self._check_addressed(resolution.address)
        if self._state.unknown is None or not self._state.unknown.in_manual_review:
            raise refused("this payment is not waiting for a manual review")
        if resolution.outcome not in (NetworkOutcome.APPROVED, NetworkOutcome.FAILED):
            raise refused("a review resolves to approved or failed")

    @workflow.query
    def current_status(self) -> IntentStatus:
        return self._state.status

    # ---- the flow ------------------------------------------------------------------------------
    async def _charge(self, charge: ChargeInput, transaction_id: str) -> ChargeResult:
        recorded = await calls.record_charge_attempt(
            ChargeAttempt(
                self._input.payment_intent_id, transaction_id, charge.card_token_id, charge.card
            )
        )
        self._book.note(recorded)
        earlier = self._book.answered_before(recorded, UnknownOutcome(transaction_id))
        if earlier is not None:
            # This Update ran in an earlier run: what its answer did to the money is recorded.
            await self._load()
            return ChargeResult(self._state.status, earlier)
        # A charge not answered yet: the database records one only where no money has moved.
        self._state.loaded = True
        answer = await calls.authorize_card(
            AuthorizeInput(
                transaction_id,
                charge.card_token_id,
                self._input.amount_in_cents,
                self._input.currency,
                capture=self._input.capture_method is CaptureMethod.AUTOMATIC,
            )
        )
        operation = UnknownOutcome(transaction_id)
        txn = await self._book.transaction_after(operation, answer)
        return ChargeResult(self._state.status, txn)

    async def _operate(
        self,
        kind: TransactionType,
        amount: int,
        parent_reference: str | None,
        transaction_id: str,
        *,
        reason: str | None = None,
    ) -> OperationResult:
        """Record a capture/void/refund under its own reference, send it, record the answer."""
        assert parent_reference is not None  # the state machine allowed it: the parent exists
        operation = UnknownOutcome(
            transaction_id, operation=kind, amount_in_cents=amount, cancellation_reason=reason
        )
        recorded = await calls.record_operation_attempt(
            OperationAttempt(
                self._input.payment_intent_id, transaction_id, kind, amount, parent_reference
            )
        )
        earlier = self._book.answered_before(recorded, operation)
        if earlier is not None:
            return OperationResult(self._state.status, earlier)
        answer = await calls.send_operation(
            kind, OperationRequest(transaction_id, parent_reference, amount, self._input.currency)
        )
        txn = await self._book.transaction_after(operation, answer)
        return OperationResult(self._state.status, txn)

    async def _cancel(self, reason: str, transaction_id: str) -> OperationResult:
        if holds_authorization(self._state.status):
            return await self._operate(
                TransactionType.VOID,
                self._state.money.amount_capturable,
                self._state.money.authorization_reference,
                transaction_id,
                reason=reason,
            )
        # No successful charge: nothing is held at the network, only the record changes.
        self._book.note(
            await calls.cancel_payment_intent(
                IntentCancellation(self._input.payment_intent_id, reason)
            )
        )
        return OperationResult(self._state.status)

    async def _void_expired_authorization(self) -> None:
        """Under the lock, so a capture racing the expiry is serialized: whichever runs first
        wins, and the other sees the new state."""
        async with self._lock:
            if not self._state.expiry_due(workflow.now().timestamp()):
                return
            workflow.logger.info(
                "authorization of %s expired: voiding it", self._input.payment_intent_id
            )
            result = await self._cancel(
                CancellationReason.EXPIRED.value, f"txn_{workflow.uuid4().hex[:24]}"
            )
            txn = result.transaction
            if txn is None or txn.status != TransactionStatus.FAILED.value:
                return
            # Not voided (declined or failed): again with backoff, to a bound, then an operator.
            if self._state.expiry_void_failed(now=workflow.now().timestamp()):
                await self._book.flag_unvoidable_authorization(txn.id)

    async def _reconcile(self, unknown: UnknownOutcome) -> None:
        """Durable timers drive status queries until the network says what it decided.

        Returns when the outcome is settled (here or by an operator), or when the history is due
        to continue as new (the loop's position travels in `unknown`).
        """
        policy = self._input.reconcile
        while self._state.unknown is unknown and not self._history_too_long():
            if unknown.waited_seconds >= policy.horizon_seconds and not unknown.in_manual_review:
                await self._book.flag_for_manual_review(unknown)
            delay = unknown.next_delay_seconds or policy.first_delay_seconds
            await workflow.sleep(timedelta(seconds=delay))
            unknown.waited_seconds += delay
            unknown.next_delay_seconds = min(delay * 2, policy.max_delay_seconds)
            answer = await self._ask_network(unknown)
            if answer.outcome is NetworkOutcome.UNKNOWN:
                continue
            async with self._lock:
                if self._state.unknown is unknown:
                    await self._book.settle(unknown, answer)
                elif unknown.settled_as is not None and not same_outcome(
                    answer.outcome, unknown.settled_as
                ):
                    await self._book.report_contradiction(unknown, answer.outcome)

    async def _ask_network(self, unknown: UnknownOutcome) -> NetworkAnswer:
        """One turn of reconciliation: what the network says about the operation, or about its
        reversal once one was sent. A charge the network keeps not finding is reversed: its
        answer is definite at once, where a `not_found` is believed only after the safe age."""
        policy = self._input.reconcile
        if unknown.reversal_reference is not None:
            return await self._book.ask_network(unknown)
        answer = await calls.query_charge_status(unknown.transaction_id)
        unknown.unanswered_queries = unknown.unanswered_queries + 1 if answer.unanswered else 0
        if reversal_due(unknown, answer, policy=policy):
            return await self._reverse(unknown)
        return believed(answer, waited_seconds=unknown.waited_seconds, policy=policy)

    async def _reverse(self, unknown: UnknownOutcome) -> NetworkAnswer:
        """Record the reversal's reference, then send it. Under the lock, so an operator's
        verdict never crosses a reversal in flight."""
        async with self._lock:
            if self._state.unknown is not unknown or unknown.in_manual_review:
                return NetworkAnswer(NetworkOutcome.UNKNOWN)
            reference = reversal_reference_for(unknown.transaction_id)
            try:
                await calls.record_reversal_attempt(
                    ReversalAttempt(
                        self._input.payment_intent_id, unknown.transaction_id, reference
                    )
                )
            except calls.RECORD_FAILURES as error:
                # Nothing was sent; an operator looks, and status queries go on meanwhile.
                workflow.logger.error(
                    "the reversal of %s could not be recorded: %s", unknown.transaction_id, error
                )
                await self._book.flag_for_manual_review(unknown)
                return NetworkAnswer(NetworkOutcome.UNKNOWN)
            unknown.reversal_reference = reference
            workflow.logger.warning(
                "%s unknown to the network after %.0f s: reversing it as %s",
                unknown.transaction_id,
                unknown.waited_seconds,
                reference,
            )
            return await self._book.send_reversal(unknown)

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
                lambda: (
                    (self._state.unknown is None and not self._lock.locked())
                    or self._history_too_long()
                )
            )
            if self._history_too_long():  # the run is about to continue as new: retry there
                raise refused(
                    "an operation on this payment is in flight", ErrorType.ATTEMPT_IN_FLIGHT
                )
            await self._lock.acquire()
            await self._load()
            if self._state.unknown is None:
                break
            self._lock.release()  # another operation went first, or one was left unknown
        try:
            yield
        finally:
            self._lock.release()

    async def _load(self) -> None:
        """Read the payment from the database once per run (a run opened after earlier ones
        closed), with any operation left unsettled. The caller holds the lock."""
        if not self._state.loaded:
            self._state.load(await calls.load_payment(self._input.payment_intent_id))

    def _start_is_genuine(self) -> bool:
        """The start input names this workflow's payment, and carries state only into a run
        continued from another (a carried state copied into a fresh run would be stale)."""
        info = workflow.info()
        return self._input.payment_intent_id == info.workflow_id and (
            self._input.carried is None or info.continued_run_id is not None
        )

    def _check_addressed(self, address: Address | None) -> None:
        """Refuses an operation input issued for another payment, Update name or Update id:
        inputs are encrypted and bound to this workflow, so only a copy of an earlier input of
        this very payment could get here, and it must not run again under a new id."""
        info = workflow.current_update_info()
        if (
            address is not None
            and info is not None
            and self._start_is_genuine()
            and address.payment_intent_id == self._input.payment_intent_id
            and address.update_name == info.name
            and address.update_id == info.id
        ):
            return
        count_refused_payload("misaddressed")
        workflow.logger.warning(
            "refused an Update %s: its input was not issued for it", info.name if info else "?"
        )
        raise refused("this input was not issued for this payment and Update", PAYLOAD_REFUSED)

    def _update_transaction_id(self) -> str:
        """The id the API derived from this Update's id (see `transaction_id_for`)."""
        info = workflow.current_update_info()
        assert info is not None  # called first thing in an update handler
        return transaction_id_for(self._input.payment_intent_id, info.id)

    async def _wait_for_work(self) -> None:
        """Until there is something to do, the run may end, or the authorization expires."""
        deadline = self._state.next_deadline()

        def ready() -> bool:
            return (
                bool(self._book.deliveries)
                or self._state.unknown is not None
                or self._at_rest()
                or self._history_too_long()
                or self._state.next_deadline() != deadline
            )  # e.g. just authorized

        timeout = (
            None
            if deadline is None
            else timedelta(seconds=max(deadline - workflow.now().timestamp(), 0.001))
        )
        try:
            await workflow.wait_condition(ready, timeout=timeout)
        except TimeoutError:
            pass  # the deadline: the main loop acts on it

    def _at_rest(self) -> bool:
        return (
            self._state.at_rest() and not self._book.deliveries and workflow.all_handlers_finished()
        )

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._input.max_history_events
        )

    def _continued_input(self) -> PaymentIntentInput:
        return PaymentIntentInput(
            self._input.payment_intent_id,
            self._input.merchant_id,
            self._input.amount_in_cents,
            self._input.currency,
            self._input.capture_method,
            self._input.reconcile,
            self._input.lifecycle,
            self._input.webhooks,
            self._input.max_history_events,
            self._state.carried(deliveries=self._book.deliveries),
        )
