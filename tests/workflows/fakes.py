"""Scripted stand-ins for the payment activities, shared by the workflow tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

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
from activities.webhooks import DeliveryPlan, PlanInput
from core import search_attributes
from core.domain import CaptureMethod, CardSummary, NetworkOutcome
from core.webhooks import WebhookSchedule
from workflows.payment_intent import PaymentIntentInput, PaymentIntentWorkflow
from workflows.payment_messages import ChargeInput, LifecyclePolicy, ReconcilePolicy

CARD = ChargeInput(card_token_id="card_1", card=CardSummary("visa", "4242", 12, 2030))


@dataclass
class FakeNetwork:
    """Scripted network answers plus a record of every call the workflow made."""

    answers: list[NetworkAnswer | Exception]
    status_answers: list[NetworkAnswer | Exception] = field(default_factory=list)
    calls: list[AuthorizeInput] = field(default_factory=list)
    status_queries: list[str] = field(default_factory=list)
    outcomes: list[ChargeOutcome] = field(default_factory=list)
    attempts: list[ChargeAttempt] = field(default_factory=list)
    review_flags: list[ManualReviewFlag] = field(default_factory=list)
    webhook_plans: list[PlanInput] = field(default_factory=list)
    status: str = "created"
    hold: asyncio.Event | None = None
    # Captures, voids and refunds: scripted answers (approved once they run out).
    operation_answers: list[NetworkAnswer | Exception] = field(default_factory=list)
    operations: list[tuple[str, OperationRequest]] = field(default_factory=list)
    operation_attempts: list[OperationAttempt] = field(default_factory=list)
    operation_outcomes: list[OperationOutcome] = field(default_factory=list)
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

    def activities(self) -> list[object]:
        @activity.defn(name="record_charge_attempt")
        async def record_charge_attempt(attempt: ChargeAttempt) -> IntentState:
            self.attempts.append(attempt)
            self.status = "processing"
            return IntentState(self.status, "pending")

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
            if (self.status_hold is not None
                    and len(self.status_queries) - 1 == self.status_hold_at):
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

        @activity.defn(name="plan_webhook_deliveries")
        async def plan_webhook_deliveries(plan: PlanInput) -> DeliveryPlan:
            self.webhook_plans.append(plan)  # no endpoints: nothing to deliver
            return DeliveryPlan(deliveries=[], last_seq=plan.after_seq + 1,
                                schedule=WebhookSchedule())

        @activity.defn(name="record_charge_outcome")
        async def record_charge_outcome(outcome: ChargeOutcome) -> IntentState:
            if self.outcome_refusals:
                raise self.outcome_refusals.pop(0)
            self.outcomes.append(outcome)
            txn_status = {NetworkOutcome.APPROVED: "succeeded", NetworkOutcome.UNKNOWN: "timeout",
                          }.get(outcome.outcome, "failed")
            if outcome.outcome is NetworkOutcome.APPROVED:
                manual = self.attempts and self.calls and not self.calls[-1].capture
                self.status = "requires_capture" if manual else "succeeded"
                self.received = 0 if manual else 2499
            elif outcome.outcome is not NetworkOutcome.UNKNOWN:
                self.status = "failed"
            return IntentState(self.status, txn_status)

        async def operate(kind: str, request: OperationRequest) -> NetworkAnswer:
            self.operations.append((kind, request))
            answer = (self.operation_answers.pop(0) if self.operation_answers
                      else NetworkAnswer(NetworkOutcome.APPROVED))
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
        async def record_operation_attempt(attempt: OperationAttempt) -> IntentState:
            self.operation_attempts.append(attempt)
            return IntentState(self.status, "pending")

        @activity.defn(name="record_operation_outcome")
        async def record_operation_outcome(outcome: OperationOutcome) -> IntentState:
            if self.operation_outcome_hold is not None:
                await self.operation_outcome_hold.wait()
            self.operation_outcomes.append(outcome)
            attempt = next(a for a in self.operation_attempts
                           if a.transaction_id == outcome.transaction_id)
            if outcome.outcome is NetworkOutcome.UNKNOWN:
                return IntentState(self.status, "timeout")
            if outcome.outcome is not NetworkOutcome.APPROVED:
                return IntentState(self.status, "failed")
            if attempt.type.value == "capture":
                self.status, self.received = "succeeded", attempt.amount_in_cents
            elif attempt.type.value == "void":
                self.status = "canceled"
            else:
                self.refunded += attempt.amount_in_cents
                self.status = ("refunded" if self.refunded >= self.received
                               else "partially_refunded")
            return IntentState(self.status, "succeeded", event_appended=True)

        @activity.defn(name="record_outcome_discrepancy")
        async def record_outcome_discrepancy(found: OutcomeDiscrepancy) -> None:
            self.discrepancies.append(found)

        @activity.defn(name="cancel_payment_intent")
        async def cancel_payment_intent(cancellation: IntentCancellation) -> IntentState:
            self.status = "canceled"
            return IntentState(self.status, "", event_appended=True)

        return [record_charge_attempt, authorize_card, query_charge_status,
                record_charge_outcome, flag_for_manual_review, plan_webhook_deliveries,
                capture_charge, void_authorization, refund_charge, record_operation_attempt,
                record_operation_outcome, cancel_payment_intent, record_outcome_discrepancy]


# Tests of charging alone end the run at `succeeded`, as before the lifecycle: no refund window.
NO_REFUNDS = LifecyclePolicy(refund_window_seconds=0)


async def start_payment(env: WorkflowEnvironment, task_queue: str, *,
                        reconcile: ReconcilePolicy | None = None,
                        lifecycle: LifecyclePolicy = NO_REFUNDS,
                        capture_method: CaptureMethod = CaptureMethod.AUTOMATIC,
                        max_history_events: int = 10_000) -> WorkflowHandle:
    intent_id = f"pi_{uuid.uuid4().hex[:12]}"
    return await env.client.start_workflow(
        PaymentIntentWorkflow.run,
        PaymentIntentInput(intent_id, "mer_1", 2499, "usd", capture_method,
                           reconcile=reconcile or ReconcilePolicy(), lifecycle=lifecycle,
                           max_history_events=max_history_events),
        id=intent_id, task_queue=task_queue)


async def in_review(handle: WorkflowHandle) -> bool:
    """Whether the payment shows as in manual review in the Web UI (its search attribute)."""
    attributes = (await handle.describe()).typed_search_attributes
    return attributes.get(search_attributes.MANUAL_REVIEW) is True


async def wait_until(env: WorkflowEnvironment, predicate: Callable[[], Awaitable[bool]], *,
                     step: float = 30, limit: int = 200) -> None:
    """Poll `predicate`, skipping `step` seconds of workflow time between tries (nothing real
    waits while no activity runs)."""
    for _ in range(limit):
        if await predicate():
            return
        await env.sleep(step)
    raise AssertionError("condition never became true")


async def run_time(handle: WorkflowHandle) -> timedelta:
    """Workflow time from the run's start to its end, read from its history."""
    events = (await handle.fetch_history()).events
    return events[-1].event_time.ToDatetime() - events[0].event_time.ToDatetime()
