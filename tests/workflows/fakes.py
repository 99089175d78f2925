"""Scripted stand-ins for the payment activities, shared by the workflow tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowExecutionDescription,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment

from activities.card_network import AuthorizeInput, NetworkAnswer, OperationRequest
from activities.persistence import (
    ChargeAttempt,
    IntentCancellation,
    ManualReviewFlag,
    OperationAttempt,
    Outcome,
    OutcomeDiscrepancy,
    PaymentSnapshot,
    Recorded,
    ReversalAttempt,
    UnsettledOperation,
)
from core import search_attributes
from core.domain import (
    CaptureMethod,
    CardSummary,
    NetworkOutcome,
    RecordedTransaction,
    TransactionType,
)
from workflows.payment_intent import PaymentIntentResult, PaymentIntentWorkflow
from workflows.payment_messages import (
    ChargeInput,
    LifecyclePolicy,
    PaymentIntentInput,
    ReconcilePolicy,
    addressed,
)

CARD = ChargeInput(card_token_id="card_1", card=CardSummary("visa", "4242", 12, 2030))
_CHARGE_STATUS = {NetworkOutcome.APPROVED: "succeeded", NetworkOutcome.UNKNOWN: "timeout"}


@dataclass
class FakeNetwork:
    """Scripted network answers plus a record of every call the workflow made."""

    answers: list[NetworkAnswer | Exception]
    status_answers: list[NetworkAnswer | Exception] = field(default_factory=list)
    calls: list[AuthorizeInput] = field(default_factory=list)
    status_queries: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    attempts: list[ChargeAttempt] = field(default_factory=list)
    review_flags: list[ManualReviewFlag] = field(default_factory=list)
    # Webhook deliveries each record returns (one per event, as if one endpoint subscribed).
    deliveries_per_event: int = 0
    planned_deliveries: list[str] = field(default_factory=list)  # every id handed out
    loads: list[str] = field(default_factory=list)
    # What `load_payment` reports as the payment's success time (workflow time, unix seconds):
    # tests set it, since an activity here cannot read the time-skipping server's clock.
    succeeded_at: float | None = None
    status: str = "created"
    hold: asyncio.Event | None = None
    # Captures, voids and refunds: scripted answers (approved once they run out).
    operation_answers: list[NetworkAnswer | Exception] = field(default_factory=list)
    operations: list[tuple[str, OperationRequest]] = field(default_factory=list)
    operation_attempts: list[OperationAttempt] = field(default_factory=list)
    operation_outcomes: list[Outcome] = field(default_factory=list)
    received: int = 0
    refunded: int = 0
    discrepancies: list[OutcomeDiscrepancy] = field(default_factory=list)
    # Status query number N (0-based) waits for `status_hold` before it takes its answer.
    status_hold_at: int | None = None
    status_hold: asyncio.Event | None = None
    # Recording an operation's outcome waits for this (settling held mid-way).
    operation_outcome_hold: asyncio.Event | None = None
    # Raised by record_charge_outcome (the database refusing a write), while not empty.
    outcome_refusals: list[Exception] = field(default_factory=list)
    # Reversals: their answers (approved once they run out), the answers to status queries of
    # their references (`not_found` once they run out), and every reversal recorded and sent,
    # in order ("record <reference>", "send <reference>").
    reversal_answers: list[NetworkAnswer | Exception] = field(default_factory=list)
    reversal_status_answers: list[NetworkAnswer] = field(default_factory=list)
    reversal_steps: list[str] = field(default_factory=list)
    reversals: list[OperationRequest] = field(default_factory=list)

    def _recorded(
        self,
        transaction_id: str | None,
        kind: str,
        txn_status: str,
        amount: int,
        *,
        event: bool,
        outcome: Outcome | None = None,
    ) -> Recorded:
        txn = (
            None
            if transaction_id is None
            else RecordedTransaction(
                transaction_id,
                kind,
                txn_status,
                amount,
                decline_code=outcome.decline_code if outcome else None,
                failure_code=outcome.failure_code if outcome else None,
                reconciled=outcome.reconciled if outcome else False,
            )
        )
        # Named by what planned them, as the database does: a record run again plans the same.
        cause = transaction_id or uuid.uuid4().hex[:12]
        deliveries = (
            [f"whd_{cause}_{txn_status}_{n}" for n in range(self.deliveries_per_event)]
            if event
            else []
        )
        self.planned_deliveries.extend(d for d in deliveries if d not in self.planned_deliveries)
        return Recorded(self.status, txn, deliveries)

    def seed_charge(
        self,
        payment_intent_id: str,
        transaction_id: str,
        outcome: NetworkOutcome | None,
        *,
        status: str,
    ) -> None:
        """A charge an earlier run recorded (and answered, unless `outcome` is None), leaving
        the intent in `status`."""
        self.attempts.append(
            ChargeAttempt(payment_intent_id, transaction_id, CARD.card_token_id, CARD.card)
        )
        if outcome is not None:
            self.outcomes.append(Outcome(payment_intent_id, transaction_id, outcome))
        self.status = status

    def _unsettled(self) -> UnsettledOperation | None:
        """The charge attempt whose outcome is not recorded yet (or recorded as unknown)."""
        for attempt in reversed(self.attempts):
            answered = [o for o in self.outcomes if o.transaction_id == attempt.transaction_id]
            if not answered or answered[-1].outcome is NetworkOutcome.UNKNOWN:
                return UnsettledOperation(attempt.transaction_id, TransactionType.CHARGE, 2499)
        return None

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="load_payment")
        async def load_payment(payment_intent_id: str) -> PaymentSnapshot:
            self.loads.append(payment_intent_id)
            charged = [a.transaction_id for a in self.attempts]
            approved = [
                o.transaction_id for o in self.outcomes if o.outcome is NetworkOutcome.APPROVED
            ]
            captured = [
                o.transaction_id
                for o in self.operation_outcomes
                if o.outcome is NetworkOutcome.APPROVED
                and any(
                    a.transaction_id == o.transaction_id and a.type.value == "capture"
                    for a in self.operation_attempts
                )
            ]
            authorization = approved[-1] if approved and approved[-1] in charged else None
            return PaymentSnapshot(
                unsettled=self._unsettled(),
                status=self.status,
                amount_received=self.received,
                amount_refunded=self.refunded,
                amount_capturable=2499 if self.status == "requires_capture" else 0,
                authorization_reference=authorization,
                payment_reference=(
                    captured[-1] if captured else authorization if self.received else None
                ),
                succeeded_at=self.succeeded_at,
            )

        @activity.defn(name="record_charge_attempt")
        async def record_charge_attempt(attempt: ChargeAttempt) -> Recorded:
            answered = [o for o in self.outcomes if o.transaction_id == attempt.transaction_id]
            if answered:  # the same attempt again (its Update retried): it is answered
                return self._recorded(
                    attempt.transaction_id,
                    "charge",
                    _CHARGE_STATUS.get(answered[-1].outcome, "failed"),
                    2499,
                    event=False,
                    outcome=answered[-1],
                )
            self.attempts.append(attempt)
            self.status = "processing"
            return self._recorded(attempt.transaction_id, "charge", "pending", 2499, event=True)

        @activity.defn(name="authorize_card")
        async def authorize_card(request: AuthorizeInput) -> NetworkAnswer:
            self.calls.append(request)
            if self.hold is not None:
                await self.hold.wait()
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        @activity.defn(name="query_charge_status")
        async def query_charge_status(reference: str) -> NetworkAnswer:
            self.status_queries.append(reference)
            if reference.endswith(":reversal"):
                return (
                    self.reversal_status_answers.pop(0)
                    if self.reversal_status_answers
                    else NetworkAnswer(NetworkOutcome.UNKNOWN, not_found=True)
                )
            if self.status_hold is not None and len(self.status_queries) - 1 == self.status_hold_at:
                await self.status_hold.wait()
            if not self.status_answers:  # the network never answers
                return NetworkAnswer(NetworkOutcome.UNKNOWN)
            answer = self.status_answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        @activity.defn(name="flag_for_manual_review")
        async def flag_for_manual_review(flag: ManualReviewFlag) -> None:
            self.review_flags.append(flag)

        @activity.defn(name="record_outcome")
        async def record_outcome(outcome: Outcome) -> Recorded:
            if any(a.transaction_id == outcome.transaction_id for a in self.attempts):
                return await record_charge_outcome(outcome)
            return await record_operation_outcome(outcome)

        async def record_charge_outcome(outcome: Outcome) -> Recorded:
            if self.outcome_refusals:
                raise self.outcome_refusals.pop(0)
            self.outcomes.append(outcome)
            txn_status = _CHARGE_STATUS.get(outcome.outcome, "failed")
            if outcome.outcome is NetworkOutcome.APPROVED:
                manual = self.attempts and self.calls and not self.calls[-1].capture
                self.status = "requires_capture" if manual else "succeeded"
                self.received = 0 if manual else 2499
            elif outcome.outcome is not NetworkOutcome.UNKNOWN:
                self.status = "failed"
            return self._recorded(
                outcome.transaction_id,
                "charge",
                txn_status,
                2499,
                event=outcome.outcome is not NetworkOutcome.UNKNOWN,
                outcome=outcome,
            )

        async def operate(kind: str, request: OperationRequest) -> NetworkAnswer:
            self.operations.append((kind, request))
            answer = (
                self.operation_answers.pop(0)
                if self.operation_answers
                else NetworkAnswer(NetworkOutcome.APPROVED)
            )
            if isinstance(answer, Exception):
                raise answer
            return answer

        @activity.defn(name="capture_charge")
        async def capture_charge(request: OperationRequest) -> NetworkAnswer:
            return await operate("capture", request)

        @activity.defn(name="void_authorization")
        async def void_authorization(request: OperationRequest) -> NetworkAnswer:
            return await operate("void", request)

        @activity.defn(name="refund_charge")
        async def refund_charge(request: OperationRequest) -> NetworkAnswer:
            return await operate("refund", request)

        @activity.defn(name="record_operation_attempt")
        async def record_operation_attempt(attempt: OperationAttempt) -> Recorded:
            self.operation_attempts.append(attempt)
            return self._recorded(
                attempt.transaction_id,
                attempt.type.value,
                "pending",
                attempt.amount_in_cents,
                event=False,
            )

        async def record_operation_outcome(outcome: Outcome) -> Recorded:
            if self.operation_outcome_hold is not None:
                await self.operation_outcome_hold.wait()
            self.operation_outcomes.append(outcome)
            attempt = next(
                a for a in self.operation_attempts if a.transaction_id == outcome.transaction_id
            )
            kind, amount = attempt.type.value, attempt.amount_in_cents
            if outcome.outcome is NetworkOutcome.UNKNOWN:
                return self._recorded(
                    outcome.transaction_id, kind, "timeout", amount, event=False, outcome=outcome
                )
            if outcome.outcome is not NetworkOutcome.APPROVED:
                return self._recorded(
                    outcome.transaction_id, kind, "failed", amount, event=False, outcome=outcome
                )
            if kind == "capture":
                self.status, self.received = "succeeded", amount
            elif kind == "void":
                self.status = "canceled"
            else:
                self.refunded += amount
                self.status = "refunded" if self.refunded >= self.received else "partially_refunded"
            return self._recorded(
                outcome.transaction_id, kind, "succeeded", amount, event=True, outcome=outcome
            )

        @activity.defn(name="record_outcome_discrepancy")
        async def record_outcome_discrepancy(found: OutcomeDiscrepancy) -> None:
            self.discrepancies.append(found)

        @activity.defn(name="cancel_payment_intent")
        async def cancel_payment_intent(cancellation: IntentCancellation) -> Recorded:
            self.status = "canceled"
            return self._recorded(None, "", "", 0, event=True)

        @activity.defn(name="record_reversal_attempt")
        async def record_reversal_attempt(attempt: ReversalAttempt) -> None:
            self.reversal_steps.append(f"record {attempt.reversal_reference}")

        @activity.defn(name="reverse_charge")
        async def reverse_charge(request: OperationRequest) -> NetworkAnswer:
            self.reversal_steps.append(f"send {request.network_reference}")
            self.reversals.append(request)
            answer = (
                self.reversal_answers.pop(0)
                if self.reversal_answers
                else NetworkAnswer(NetworkOutcome.APPROVED)
            )
            if isinstance(answer, Exception):
                raise answer
            return answer

        return [
            load_payment,
            record_charge_attempt,
            authorize_card,
            query_charge_status,
            record_outcome,
            flag_for_manual_review,
            capture_charge,
            void_authorization,
            refund_charge,
            record_operation_attempt,
            cancel_payment_intent,
            record_outcome_discrepancy,
            record_reversal_attempt,
            reverse_charge,
        ]


@dataclass
class PaymentHandle:
    """A payment as the API drives it: every operation is an update-with-start, so it joins
    the open run or opens a new one once the last has ended at rest. Reads go to the latest
    run."""

    env: WorkflowEnvironment
    input: PaymentIntentInput
    task_queue: str
    runs: list[str] = field(default_factory=list)  # every run an operation opened or joined

    @property
    def id(self) -> str:
        return self.input.payment_intent_id

    def _start(self) -> WithStartWorkflowOperation[Any, Any]:
        return WithStartWorkflowOperation(
            PaymentIntentWorkflow.run,
            self.input,
            id=self.id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    async def start_update(
        self,
        update: Any,
        argument: Any,
        *,
        id: str | None = None,
        wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
    ) -> WorkflowUpdateHandle[Any]:
        start = self._start()
        id = id or f"{update.__name__}:{uuid.uuid4().hex}"
        argument = addressed(argument, update, payment_intent_id=self.id, update_id=id)
        handle = await self.env.client.start_update_with_start_workflow(
            update, argument, start_workflow_operation=start, wait_for_stage=wait_for_stage, id=id
        )
        run_id = (await start.workflow_handle()).result_run_id
        if run_id is not None and run_id not in self.runs:
            self.runs.append(run_id)
        return handle

    async def execute_update(self, update: Any, argument: Any, *, id: str | None = None) -> Any:
        handle = await self.start_update(update, argument, id=id)
        return await handle.result()

    def latest(self) -> WorkflowHandle[Any, Any]:
        return self.env.client.get_workflow_handle(self.id)

    async def result(self) -> Any:
        """The latest run's result (following its continue-as-new chain)."""
        run_id = (await self.describe()).run_id
        # The typed handle get_workflow_handle_for() gives, which mypy cannot infer there.
        handle = self.env.client.get_workflow_handle(
            self.id, run_id=run_id, result_type=PaymentIntentResult
        )
        # As the time-skipping env does for handles of workflows it started itself: skip time
        # while waiting for the result.
        # The time-skipping environment has it; WorkflowEnvironment, the type given, does not.
        async with self.env.time_skipping_unlocked():  # type: ignore[attr-defined]
            return await handle.result()

    async def describe(self) -> WorkflowExecutionDescription:
        return await self.latest().describe()

    async def fetch_history(self) -> WorkflowHistory:
        return await self.latest().fetch_history()

    async def query(self, query: Any) -> Any:
        return await self.latest().query(query)


async def start_payment(
    env: WorkflowEnvironment,
    task_queue: str,
    *,
    reconcile: ReconcilePolicy | None = None,
    lifecycle: LifecyclePolicy | None = None,
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC,
    max_history_events: int = 10_000,
) -> PaymentHandle:
    """A new payment; its first operation opens its first run."""
    intent_id = f"pi_{uuid.uuid4().hex[:12]}"
    return PaymentHandle(
        env,
        PaymentIntentInput(
            intent_id,
            "mer_1",
            2499,
            "usd",
            capture_method,
            reconcile=reconcile or ReconcilePolicy(),
            lifecycle=lifecycle or LifecyclePolicy(),
            max_history_events=max_history_events,
        ),
        task_queue,
    )


async def in_review(handle: WorkflowHandle | PaymentHandle) -> bool:
    """Whether the payment shows as in manual review in the Web UI (its search attribute)."""
    attributes = (await handle.describe()).typed_search_attributes
    return attributes.get(search_attributes.MANUAL_REVIEW) is True


async def wait_until(
    env: WorkflowEnvironment,
    predicate: Callable[[], Awaitable[bool]],
    *,
    step: float = 30,
    limit: int = 200,
) -> None:
    """Poll `predicate`, skipping `step` seconds of workflow time between tries (nothing real
    waits while no activity runs)."""
    for _ in range(limit):
        if await predicate():
            return
        await env.sleep(step)
    raise AssertionError("condition never became true")


async def run_time(handle: WorkflowHandle | PaymentHandle) -> timedelta:
    """Workflow time from the run's start to its end, read from its history."""
    events = (await handle.fetch_history()).events
    return events[-1].event_time.ToDatetime() - events[0].event_time.ToDatetime()
