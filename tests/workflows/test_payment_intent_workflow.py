"""PaymentIntentWorkflow on the time-skipping server, with the activities mocked."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import AuthorizeInput, NetworkAnswer
from activities.persistence import ChargeAttempt, ChargeOutcome, IntentState
from core.domain import CaptureMethod, CardSummary, IntentStatus, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import new_worker
from workflows.payment_intent import ChargeInput, PaymentIntentInput, PaymentIntentWorkflow

CARD = ChargeInput(card_token_id="card_1", card=CardSummary("visa", "4242", 12, 2030))


@dataclass
class FakeNetwork:
    """Scripted network answers plus a record of every call the workflow made."""

    answers: list[NetworkAnswer | Exception]
    status_answers: list[NetworkAnswer] = field(default_factory=list)
    calls: list[AuthorizeInput] = field(default_factory=list)
    status_queries: list[str] = field(default_factory=list)
    outcomes: list[ChargeOutcome] = field(default_factory=list)
    attempts: list[ChargeAttempt] = field(default_factory=list)
    status: str = "created"
    hold: asyncio.Event | None = None

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
            return self.status_answers.pop(0)

        @activity.defn(name="record_charge_outcome")
        async def record_charge_outcome(outcome: ChargeOutcome) -> IntentState:
            self.outcomes.append(outcome)
            txn_status = {NetworkOutcome.APPROVED: "succeeded", NetworkOutcome.UNKNOWN: "timeout",
                          }.get(outcome.outcome, "failed")
            if outcome.outcome is NetworkOutcome.APPROVED:
                self.status = "succeeded"
            elif outcome.outcome is not NetworkOutcome.UNKNOWN:
                self.status = "failed"
            return IntentState(self.status, txn_status)

        return [record_charge_attempt, authorize_card, query_charge_status,
                record_charge_outcome]


async def _start(env: WorkflowEnvironment, task_queue: str) -> WorkflowHandle:
    intent_id = f"pi_{uuid.uuid4().hex[:12]}"
    return await env.client.start_workflow(
        PaymentIntentWorkflow.run,
        PaymentIntentInput(intent_id, "mer_1", 2499, "usd", CaptureMethod.AUTOMATIC),
        id=intent_id, task_queue=task_queue)


async def test_approved_charge_succeeds_and_ends_the_workflow(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.APPROVED)])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await _start(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert result.transaction_status == "succeeded"
        assert result.intent_status is IntentStatus.SUCCEEDED
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    # The attempt is recorded before the network is called, under the same reference.
    assert network.attempts[0].transaction_id == network.calls[0].network_reference
    assert network.calls[0].capture is True
    assert network.calls[0].card_token_id == "card_1"


async def test_decline_allows_a_second_attempt_with_a_new_reference(
        env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline"),
                                   NetworkAnswer(NetworkOutcome.APPROVED)])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await _start(env, worker.task_queue)
        first = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (first.transaction_status, first.decline_code) == ("failed", "generic_decline")
        assert await handle.query(PaymentIntentWorkflow.current_status) is IntentStatus.FAILED
        second = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert second.transaction_status == "succeeded"
        await handle.result()
    refs = [c.network_reference for c in network.calls]
    assert len(set(refs)) == 2


async def test_network_5xx_retries_with_the_same_reference_then_fails_cleanly(
        env: WorkflowEnvironment) -> None:
    unavailable = ApplicationError("503", type=ErrorType.NETWORK_UNAVAILABLE)
    network = FakeNetwork(answers=[unavailable] * 4)
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await _start(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
    assert result.transaction_status == "failed"
    assert network.outcomes[-1].failure_code == "processing_error"
    assert len(network.calls) == 4
    assert len({c.network_reference for c in network.calls}) == 1


async def test_unknown_outcome_is_reconciled_by_status_queries(env: WorkflowEnvironment) -> None:
    pending = NetworkAnswer(NetworkOutcome.UNKNOWN)
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.UNKNOWN)],
                          status_answers=[pending] * 5 + [NetworkAnswer(NetworkOutcome.APPROVED)])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await _start(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert result.transaction_status == "timeout"
        assert result.intent_status is IntentStatus.PROCESSING
        # A second charge while the first is unknown would risk a double charge.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        before = await env.get_current_time()
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        waited = await env.get_current_time() - before
    assert len(network.calls) == 1  # never re-sent, only queried
    assert network.status_queries == [network.calls[0].network_reference] * 6
    assert network.outcomes[-1].reconciled is True
    assert waited >= timedelta(seconds=2 + 4 + 8 + 16 + 32 + 64)


async def test_second_charge_while_one_is_in_flight_is_rejected(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.APPROVED)], hold=asyncio.Event())
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await _start(env, worker.task_queue)
        first = asyncio.create_task(
            handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD))
        while not network.calls:
            await asyncio.sleep(0.05)
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert isinstance(rejected.value.cause, ApplicationError)
        assert rejected.value.cause.type == ErrorType.ATTEMPT_IN_FLIGHT
        assert network.hold is not None
        network.hold.set()
        assert (await first).transaction_status == "succeeded"
    assert len(network.calls) == 1
