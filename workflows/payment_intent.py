"""PaymentIntentWorkflow: one durable process per PaymentIntent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.card_network import AuthorizeInput, CardNetworkActivities, NetworkAnswer
    from activities.persistence import (
        ChargeAttempt,
        ChargeOutcome,
        IntentState,
        PaymentRecordActivities,
    )
    from core.domain import CaptureMethod, CardSummary, IntentStatus, NetworkOutcome
    from core.errors import ErrorType
    from core.state_machine import can_start_charge

# Database writes must eventually land: retry patiently (Postgres restarts, failovers).
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                       maximum_interval=timedelta(seconds=30))
# 5xx/refused means "not charged": a few retries with the same reference, then the attempt fails.
NETWORK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=4), maximum_attempts=4,
    non_retryable_error_types=[ErrorType.NETWORK_REJECTED_REQUEST, ErrorType.VAULT_TOKEN_MISSING],
)
STATUS_QUERY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                                 maximum_interval=timedelta(seconds=30))
# Reconciliation: status queries at 2 s, 4 s, 8 s … capped at 5 min, for up to a day.
RECONCILE_FIRST_DELAY = timedelta(seconds=2)
RECONCILE_MAX_DELAY = timedelta(minutes=5)
RECONCILE_HORIZON = timedelta(hours=24)
CLOSED_STATUSES = frozenset({IntentStatus.SUCCEEDED, IntentStatus.CANCELED})


@dataclass
class PaymentIntentInput:
    payment_intent_id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: CaptureMethod


@dataclass
class PaymentIntentResult:
    status: IntentStatus


@dataclass
class ChargeInput:
    card_token_id: str
    card: CardSummary


@dataclass
class ChargeResult:
    transaction_id: str
    transaction_status: str
    intent_status: IntentStatus
    decline_code: str | None = None


@workflow.defn
class PaymentIntentWorkflow:
    """A PaymentIntent's life: wait for a charge, record the attempt, ask the card network, and
    record its answer. A decline lets the merchant try another card; an unknown answer (timeout,
    lost response) is never guessed: durable timers drive status queries until the network's
    truth is known. The run ends once the payment has succeeded or been canceled.
    """

    @workflow.init
    def __init__(self, input: PaymentIntentInput) -> None:
        self._input = input
        self._status = IntentStatus.CREATED
        self._attempt_in_flight = False
        self._unknown: ChargeOutcome | None = None
        self._lock = asyncio.Lock()  # one charge attempt at a time, even if two slip past

    @workflow.run
    async def run(self, input: PaymentIntentInput) -> PaymentIntentResult:
        while self._status not in CLOSED_STATUSES:
            await workflow.wait_condition(
                lambda: self._unknown is not None or self._status in CLOSED_STATUSES)
            if self._unknown is not None:
                await self._reconcile(self._unknown)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return PaymentIntentResult(self._status)

    @workflow.update
    async def confirm_charge(self, charge: ChargeInput) -> ChargeResult:
        async with self._lock:
            self._check_can_charge()  # again: a second update may pass the validator first
            self._attempt_in_flight = True
            try:
                return await self._charge(charge)
            finally:
                self._attempt_in_flight = self._unknown is not None

    @confirm_charge.validator
    def _validate_charge(self, charge: ChargeInput) -> None:
        self._check_can_charge()

    @workflow.query
    def current_status(self) -> IntentStatus:
        return self._status

    # ---- steps ---------------------------------------------------------------------------------
    async def _charge(self, charge: ChargeInput) -> ChargeResult:
        transaction_id = f"txn_{workflow.uuid4().hex[:24]}"
        state = await workflow.execute_activity_method(
            PaymentRecordActivities.record_charge_attempt,
            ChargeAttempt(self._input.payment_intent_id, transaction_id, charge.card_token_id,
                          charge.card),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        self._status = IntentStatus(state.status)
        answer = await self._ask_network(transaction_id, charge.card_token_id)
        outcome = ChargeOutcome(self._input.payment_intent_id, transaction_id, answer.outcome,
                                decline_code=answer.decline_code,
                                failure_code="processing_error"
                                if answer.outcome is NetworkOutcome.FAILED else None)
        state = await self._record_outcome(outcome)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            self._unknown = outcome
        return ChargeResult(transaction_id, state.transaction_status, self._status,
                            answer.decline_code)

    async def _ask_network(self, transaction_id: str, card_token_id: str) -> NetworkAnswer:
        try:
            return await workflow.execute_activity_method(
                CardNetworkActivities.authorize_card,
                AuthorizeInput(transaction_id, card_token_id, self._input.amount_in_cents,
                               self._input.currency,
                               capture=self._input.capture_method is CaptureMethod.AUTOMATIC),
                # The adapter gives up at its own HTTP timeout (5 s) and answers "unknown";
                # this bound only catches a worker that died mid-call.
                start_to_close_timeout=timedelta(seconds=20), retry_policy=NETWORK_RETRY)
        except ActivityError as error:
            if _error_type(error) == ErrorType.NETWORK_UNAVAILABLE:
                # Every try was refused or answered 5xx: the network charged nothing.
                return NetworkAnswer(NetworkOutcome.FAILED)
            raise

    async def _reconcile(self, unknown: ChargeOutcome) -> None:
        """Durable timers drive status queries until the network says what it decided."""
        delay, waited = RECONCILE_FIRST_DELAY, timedelta(0)
        while waited < RECONCILE_HORIZON:
            await workflow.sleep(delay)
            waited += delay
            answer = await workflow.execute_activity_method(
                CardNetworkActivities.query_charge_status, unknown.transaction_id,
                start_to_close_timeout=timedelta(seconds=20), retry_policy=STATUS_QUERY_RETRY)
            if answer.outcome is not NetworkOutcome.UNKNOWN:
                await self._record_outcome(ChargeOutcome(
                    unknown.payment_intent_id, unknown.transaction_id, answer.outcome,
                    decline_code=answer.decline_code, reconciled=True))
                self._unknown = None
                self._attempt_in_flight = False
                return
            delay = min(delay * 2, RECONCILE_MAX_DELAY)
        workflow.logger.error("outcome of %s still unknown after %s", unknown.transaction_id,
                              RECONCILE_HORIZON)
        # Manual review comes with the reconciliation issue; until then keep waiting visibly.
        await workflow.wait_condition(lambda: False)

    async def _record_outcome(self, outcome: ChargeOutcome) -> IntentState:
        state = await workflow.execute_activity_method(
            PaymentRecordActivities.record_charge_outcome, outcome,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        self._status = IntentStatus(state.status)
        return state

    def _check_can_charge(self) -> None:
        if self._attempt_in_flight:
            raise ApplicationError("a charge attempt is already in flight",
                                   type=ErrorType.ATTEMPT_IN_FLIGHT, non_retryable=True)
        if not can_start_charge(self._status):
            raise ApplicationError(f"cannot charge a payment intent in status {self._status}",
                                   type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)


def _error_type(error: ActivityError) -> str | None:
    cause = error.cause
    return cause.type if isinstance(cause, ApplicationError) else None
