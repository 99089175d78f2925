"""PaymentIntentWorkflow: one durable process per PaymentIntent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
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
        ManualReviewFlag,
        PaymentRecordActivities,
    )
    from core import search_attributes
    from core.domain import CaptureMethod, CardSummary, IntentStatus, NetworkOutcome
    from core.errors import ErrorType
    from core.state_machine import can_start_charge

from workflows.webhook_fanout import dispatch_webhooks

# Database writes must eventually land: retry patiently (Postgres restarts, failovers).
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                       maximum_interval=timedelta(seconds=30))
# 5xx/refused means "not charged": a few retries with the same reference, then the attempt fails.
NETWORK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=4), maximum_attempts=4,
    non_retryable_error_types=[ErrorType.NETWORK_REJECTED_REQUEST, ErrorType.VAULT_TOKEN_MISSING],
)
# A status query that keeps failing counts as "still unknown": the reconciliation loop's own
# backoff and horizon then apply, so a long network outage still ends in a manual review.
STATUS_QUERY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                                 maximum_interval=timedelta(seconds=10), maximum_attempts=4)
CLOSED_STATUSES = frozenset({IntentStatus.SUCCEEDED, IntentStatus.CANCELED})
# Patches (see tests/workflows/test_replay.py): runs begun before a change replay unchanged.
SEARCH_ATTRIBUTES_PATCH = "upsert-status-search-attributes-2026-11"
MANUAL_REVIEW_PATCH = "manual-review-after-horizon-2026-11"
WEBHOOKS_PATCH = "webhook-fan-out-2026-11"


@dataclass
class ReconcilePolicy:
    """Status queries after 2 s, 4 s, 8 s … capped; past the horizon a person must look."""

    first_delay_seconds: float = 2.0
    max_delay_seconds: float = 300.0
    horizon_seconds: float = 86_400.0


@dataclass
class UnknownOutcome:
    """A charge whose outcome the network has not told us yet; carried across continue-as-new."""

    transaction_id: str
    waited_seconds: float = 0.0
    next_delay_seconds: float = 0.0  # 0: the policy's first delay
    in_manual_review: bool = False


@dataclass
class CarriedState:
    status: IntentStatus
    unknown: UnknownOutcome | None = None
    # The intent's events up to this `seq` have had their webhook deliveries started.
    events_dispatched: int = 0


@dataclass
class PaymentIntentInput:
    payment_intent_id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: CaptureMethod
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    # Past this many history events the run continues as new, carrying its state, so a payment
    # retried with many cards or reconciled for days never grows an unbounded history.
    max_history_events: int = 10_000
    carried: CarriedState | None = None


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


@dataclass
class ManualReviewResolution:
    """An operator's verdict after checking with the network out of band."""

    outcome: NetworkOutcome  # APPROVED (the network charged) or FAILED (it did not)
    note: str


@workflow.defn
class PaymentIntentWorkflow:
    """A PaymentIntent's life: wait for a charge, record the attempt, ask the card network, and
    record its answer. A decline lets the merchant try another card; an unknown answer (timeout,
    lost response) is never guessed: durable timers drive status queries until the network's
    truth is known, and past the horizon an operator is asked to look. The run ends once the
    payment has succeeded or been canceled.
    """

    @workflow.init
    def __init__(self, input: PaymentIntentInput) -> None:
        self._input = input
        carried = input.carried or CarriedState(IntentStatus.CREATED)
        self._status = carried.status
        self._unknown = carried.unknown
        self._attempt_in_flight = self._unknown is not None
        self._lock = asyncio.Lock()  # one charge attempt at a time, even if two slip past
        self._events_dispatched = carried.events_dispatched
        self._webhooks = False  # decided in `run`: runs begun before webhooks send none
        self._dispatch_needed = False

    @workflow.run
    async def run(self, input: PaymentIntentInput) -> PaymentIntentResult:
        self._webhooks = workflow.patched(WEBHOOKS_PATCH)
        self._dispatch_needed = self._webhooks  # `payment.created`, appended by the API
        while not self._closed() or self._dispatch_needed:
            await workflow.wait_condition(
                lambda: self._unknown is not None or self._dispatch_needed or self._closed()
                or self._history_too_long())
            if self._dispatch_needed:
                await self._dispatch_webhooks()
            if self._unknown is not None:
                await self._reconcile(self._unknown)
            if self._history_too_long() and not self._closed():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._continued_input())
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

    @workflow.update
    async def resolve_manual_review(self, resolution: ManualReviewResolution) -> IntentStatus:
        unknown = self._unknown
        assert unknown is not None  # the validator saw it; nothing awaited since
        self._unknown = None  # the reconciliation loop stops at its next wake-up
        await self._settle(unknown, resolution.outcome, decline_code=None,
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

    # ---- steps ---------------------------------------------------------------------------------
    async def _charge(self, charge: ChargeInput) -> ChargeResult:
        transaction_id = f"txn_{workflow.uuid4().hex[:24]}"
        state = await workflow.execute_activity_method(
            PaymentRecordActivities.record_charge_attempt,
            ChargeAttempt(self._input.payment_intent_id, transaction_id, charge.card_token_id,
                          charge.card),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        self._set_status(state.status)
        answer = await self._ask_network(transaction_id, charge.card_token_id)
        outcome = ChargeOutcome(self._input.payment_intent_id, transaction_id, answer.outcome,
                                decline_code=answer.decline_code,
                                failure_code="processing_error"
                                if answer.outcome is NetworkOutcome.FAILED else None)
        state = await self._record_outcome(outcome)
        if answer.outcome is NetworkOutcome.UNKNOWN:
            self._unknown = UnknownOutcome(transaction_id)
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
            answer = await self._query_network(unknown.transaction_id)
            if answer.outcome is not NetworkOutcome.UNKNOWN and self._unknown is unknown:
                self._unknown = None
                await self._settle(unknown, answer.outcome, decline_code=answer.decline_code,
                                   failure_code=None)

    async def _query_network(self, transaction_id: str) -> NetworkAnswer:
        try:
            return await workflow.execute_activity_method(
                CardNetworkActivities.query_charge_status, transaction_id,
                start_to_close_timeout=timedelta(seconds=20), retry_policy=STATUS_QUERY_RETRY)
        except ActivityError:
            return NetworkAnswer(NetworkOutcome.UNKNOWN)

    async def _flag_for_manual_review(self, unknown: UnknownOutcome) -> None:
        """Past the horizon: flag it for operators, loudly, and keep querying the network."""
        workflow.logger.error("outcome of %s still unknown after %.0f s: manual review",
                              unknown.transaction_id, unknown.waited_seconds)
        await workflow.execute_activity_method(
            PaymentRecordActivities.flag_for_manual_review,
            ManualReviewFlag(self._input.payment_intent_id, unknown.transaction_id,
                             unknown.waited_seconds),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        unknown.in_manual_review = True
        workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(True)])

    async def _settle(self, unknown: UnknownOutcome, outcome: NetworkOutcome, *,
                      decline_code: str | None, failure_code: str | None) -> None:
        await self._record_outcome(ChargeOutcome(
            self._input.payment_intent_id, unknown.transaction_id, outcome,
            decline_code=decline_code, failure_code=failure_code, reconciled=True))
        self._attempt_in_flight = False
        if unknown.in_manual_review:
            workflow.upsert_search_attributes([search_attributes.MANUAL_REVIEW.value_set(False)])

    async def _record_outcome(self, outcome: ChargeOutcome) -> IntentState:
        state = await workflow.execute_activity_method(
            PaymentRecordActivities.record_charge_outcome, outcome,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        self._set_status(state.status)
        return state

    async def _dispatch_webhooks(self) -> None:
        """Start the deliveries of the events recorded since the last dispatch (children that
        outlive this run). Runs in the main loop, so a charge's answer never waits for it."""
        self._dispatch_needed = False
        self._events_dispatched = await dispatch_webhooks(self._input.payment_intent_id,
                                                          self._events_dispatched)

    # ---- state ---------------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        """Track the intent's status and show it to operators (Web UI search attribute).

        Every status change appended an event in the same database transaction, so it is also
        the moment to fan that event out to the merchant's webhook endpoints.
        """
        changed = status != self._status
        self._status = IntentStatus(status)
        if changed and workflow.patched(SEARCH_ATTRIBUTES_PATCH):
            workflow.upsert_search_attributes([search_attributes.STATUS.value_set(status)])
        if changed and self._webhooks:
            self._dispatch_needed = True

    def _check_can_charge(self) -> None:
        if self._attempt_in_flight:
            raise ApplicationError("a charge attempt is already in flight",
                                   type=ErrorType.ATTEMPT_IN_FLIGHT, non_retryable=True)
        if not can_start_charge(self._status):
            raise ApplicationError(f"cannot charge a payment intent in status {self._status}",
                                   type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True)

    def _closed(self) -> bool:
        return self._status in CLOSED_STATUSES

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return (info.is_continue_as_new_suggested()
                or info.get_current_history_length() >= self._input.max_history_events)

    def _continued_input(self) -> PaymentIntentInput:
        return PaymentIntentInput(
            self._input.payment_intent_id, self._input.merchant_id, self._input.amount_in_cents,
            self._input.currency, self._input.capture_method, self._input.reconcile,
            self._input.max_history_events,
            CarriedState(self._status, self._unknown, self._events_dispatched))


def _error_type(error: ActivityError) -> str | None:
    cause = error.cause
    return cause.type if isinstance(cause, ApplicationError) else None
