"""The payment's records as PaymentIntentWorkflow keeps them: every answer written to the
database, what it did to the money, and what operators and merchants see of it (the status
search attribute, manual reviews, webhook deliveries to start).

Not a workflow: a helper that runs in the workflow's context (its calls schedule local
activities in the workflow's history), so the workflow file reads as the payment flow and this
one as its bookkeeping. The workflow decides when; this decides how it is recorded.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.card_network import NetworkAnswer, OperationRequest
    from activities.persistence import ManualReviewFlag, Outcome, OutcomeDiscrepancy, Recorded
    from core import search_attributes
    from core.domain import NetworkOutcome, RecordedTransaction, TransactionStatus, TransactionType
    from core.errors import ErrorType

from workflows import payment_calls as calls
from workflows.payment_messages import ManualReviewResolution, UnknownOutcome
from workflows.payment_outcomes import CHARGE_REVERSED, reversal_proves, same_outcome
from workflows.payment_state import PaymentState, refused


class PaymentBook:
    def __init__(
        self, payment_intent_id: str, amount_in_cents: int, state: PaymentState, *, currency: str
    ) -> None:
        self._payment_intent_id = payment_intent_id
        self._amount_in_cents = amount_in_cents
        self._currency = currency
        self._state = state
        self.deliveries: list[str] = []  # planned with their events, not started yet

    async def record_answer(
        self,
        operation: UnknownOutcome,
        answer: NetworkAnswer,
        *,
        reconciled: bool = False,
        failure_code: str | None = None,
    ) -> RecordedTransaction | None:
        """Record the network's answer (or an operator's verdict) for one operation and learn
        what it did to the money. An unknown answer, or one the database refuses to record
        (then None), is left to the workflow's reconciliation: status queries on durable
        timers watch it."""
        if answer.outcome is NetworkOutcome.FAILED and failure_code is None:
            failure_code = "processing_error"
        try:
            recorded = await calls.record_outcome(
                Outcome(
                    self._payment_intent_id,
                    operation.transaction_id,
                    answer.outcome,
                    decline_code=answer.decline_code,
                    failure_code=failure_code,
                    reconciled=reconciled,
                    cancellation_reason=operation.cancellation_reason,
                )
            )
        except calls.RECORD_FAILURES as error:
            # Not retried (the database will never accept it): keep the operation watched and
            # put it in front of an operator now.
            workflow.logger.error(
                "the answer %s for %s could not be recorded: %s",
                answer.outcome,
                operation.transaction_id,
                error,
            )
            self._state.unknown = self._state.unknown or operation
            if not self._state.unknown.in_manual_review:
                await self.flag_for_manual_review(self._state.unknown)
            return None
        self.note(recorded, network_time=answer.network_time)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            self._state.unknown = operation
        else:
            operation.settled_as = answer.outcome
            self.close_review()
        txn = recorded.transaction
        assert txn is not None  # an outcome is always about its transaction
        self._state.learn(
            operation.operation, operation.transaction_id, self._amount_of(operation), txn.status
        )
        return txn

    async def transaction_after(
        self, operation: UnknownOutcome, answer: NetworkAnswer
    ) -> RecordedTransaction:
        """Record the answer; the transaction as the merchant is told it. One whose answer the
        database refused is `pending` to the merchant (202) while an operator looks."""
        recorded = await self.record_answer(operation, answer)
        if recorded is not None:
            return recorded
        return RecordedTransaction(
            operation.transaction_id,
            operation.operation.value,
            TransactionStatus.PENDING.value,
            self._amount_of(operation),
        )

    def answered_before(
        self, recorded: Recorded, operation: UnknownOutcome
    ) -> RecordedTransaction | None:
        """The same Update already ran in an earlier run (the API retried it after a crash):
        its recorded answer stands, and nothing is sent again."""
        txn = recorded.transaction
        if txn is None or txn.status == TransactionStatus.PENDING.value:
            return None
        if txn.status == TransactionStatus.TIMEOUT.value:
            self._state.unknown = self._state.unknown or operation
        return txn

    async def settle(
        self, unknown: UnknownOutcome, answer: NetworkAnswer, *, failure_code: str | None = None
    ) -> None:
        """Record the truth about an unknown outcome; it stays watched if the record fails."""
        if (
            failure_code is None
            and unknown.reversal_reference is not None
            and answer.outcome is NetworkOutcome.FAILED
        ):
            failure_code = CHARGE_REVERSED
        if (
            await self.record_answer(unknown, answer, reconciled=True, failure_code=failure_code)
            is not None
        ):
            self._state.unknown = None

    async def report_contradiction(self, unknown: UnknownOutcome, network: NetworkOutcome) -> None:
        """A late answer of the network contradicts what was recorded (an operator's verdict):
        never overwritten, always put in front of operators."""
        assert unknown.settled_as is not None
        workflow.logger.error(
            "the network answered %s for %s, recorded as %s: discrepancy",
            network,
            unknown.transaction_id,
            unknown.settled_as,
        )
        await calls.record_outcome_discrepancy(
            OutcomeDiscrepancy(
                self._payment_intent_id,
                unknown.transaction_id,
                recorded=unknown.settled_as,
                network=network,
            )
        )

    async def flag_unvoidable_authorization(self, transaction_id: str) -> None:
        """An expired authorization the network would not void, however often asked: an
        operator decides (void or capture it through the API)."""
        workflow.logger.error(
            "authorization of %s could not be voided after %d tries: manual review",
            self._payment_intent_id,
            self._state.money.expiry_void_failures,
        )
        await calls.flag_for_manual_review(
            ManualReviewFlag(
                self._payment_intent_id,
                transaction_id,
                0.0,
                reason="expired authorization could not be voided",
            )
        )
        self.open_review()

    async def flag_for_manual_review(self, unknown: UnknownOutcome) -> None:
        """Past the horizon (or refused by the database): flag it for operators, loudly, and
        keep querying the network."""
        workflow.logger.error(
            "outcome of %s still unknown after %.0f s: manual review",
            unknown.transaction_id,
            unknown.waited_seconds,
        )
        await calls.flag_for_manual_review(
            ManualReviewFlag(
                self._payment_intent_id, unknown.transaction_id, unknown.waited_seconds
            )
        )
        unknown.in_manual_review = True
        self.open_review()

    async def resolve_review(self, resolution: ManualReviewResolution) -> None:
        """An operator's verdict, accepted only where the network has no answer of its own: it
        is asked once more (the caller holds the payment's lock), and its answer wins."""
        unknown = self._state.unknown
        if unknown is None or not unknown.in_manual_review:
            raise refused("this payment is no longer waiting for a manual review")
        answer = await self.ask_network(unknown)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            await self.settle(
                unknown, NetworkAnswer(resolution.outcome), failure_code="manual_review"
            )
            workflow.logger.warning(
                "manual review of %s resolved as %s: %s",
                unknown.transaction_id,
                resolution.outcome,
                resolution.note,
            )
            return
        await self.settle(unknown, answer)
        if not same_outcome(answer.outcome, resolution.outcome):
            raise refused(
                f"the network answered {answer.outcome.value} for {unknown.transaction_id}: "
                f"the payment is settled as the network says and the verdict "
                f"{resolution.outcome.value} was not recorded",
                ErrorType.VERDICT_CONTRADICTS_NETWORK,
            )

    async def ask_network(self, unknown: UnknownOutcome) -> NetworkAnswer:
        """A status query about the operation, or about its reversal once one was sent (the
        original's own status may then show an approval the reversal undid); a reversal the
        network does not know (lost before it arrived) is sent again, same reference."""
        if unknown.reversal_reference is None:
            return await calls.query_charge_status(unknown.transaction_id)
        answer = await calls.query_charge_status(unknown.reversal_reference)
        if answer.not_found:
            return await self.send_reversal(unknown)
        return reversal_proves(answer)

    async def send_reversal(self, unknown: UnknownOutcome) -> NetworkAnswer:
        """Send the recorded reversal of a charge; what its answer proves about the charge."""
        assert unknown.reversal_reference is not None  # recorded before it is sent
        return reversal_proves(
            await calls.reverse_charge(
                OperationRequest(
                    unknown.reversal_reference,
                    unknown.transaction_id,
                    self._amount_in_cents,
                    self._currency,
                )
            )
        )

    def note(self, recorded: Recorded, *, network_time: float | None = None) -> None:
        """Learn the status the database recorded, show a change to operators (the Web UI's
        status search attribute, once per change), and queue the webhook deliveries planned
        with its event for the main loop, so an answer never waits for them."""
        if self._state.move_to(
            recorded.status, now=workflow.now().timestamp(), authorized_at=network_time
        ):
            workflow.upsert_search_attributes([search_attributes.STATUS.value_set(recorded.status)])
        self.deliveries.extend(recorded.deliveries)

    def open_review(self) -> None:
        self._state.review_open = True
        workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(True)])

    def close_review(self) -> None:
        """The database closed the review with the outcome it recorded; so does the Web UI."""
        if self._state.review_open:
            self._state.review_open = False
            workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(False)])

    def _amount_of(self, operation: UnknownOutcome) -> int:
        return (
            self._amount_in_cents
            if operation.operation is TransactionType.CHARGE
            else operation.amount_in_cents
        )
