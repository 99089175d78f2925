"""Capture, cancel/void, refunds and authorization expiry on the time-skipping server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from core.domain import CaptureMethod, IntentStatus, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, run_time, start_payment
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import CancelInput, CaptureInput, LifecyclePolicy, RefundInput

APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
SHORT_WINDOW = LifecyclePolicy(refund_window_seconds=3600)


async def test_authorization_expires_after_seven_days_and_is_voided(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=LifecyclePolicy()
        )
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert result.intent_status is IntentStatus.REQUIRES_CAPTURE
        assert (await handle.result()).status is IntentStatus.CANCELED
        waited = await run_time(handle)
    assert timedelta(days=7) <= waited < timedelta(days=7, hours=1)
    [(kind, void)] = network.operations
    assert (kind, void.parent_reference) == ("void", network.calls[0].network_reference)
    assert network.operation_outcomes[0].cancellation_reason == "expired"


async def test_capture_then_refunds_until_refunded_end_the_run(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=SHORT_WINDOW
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        with pytest.raises(WorkflowUpdateFailedError) as too_much:
            await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput(2500))
        assert isinstance(too_much.value.cause, ApplicationError)
        assert isinstance(too_much.value.cause, ApplicationError)
        assert too_much.value.cause.type == ErrorType.AMOUNT_INVALID
        captured = await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput(2000))
        assert captured.intent_status is IntentStatus.SUCCEEDED
        with pytest.raises(WorkflowUpdateFailedError) as twice:
            await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
        assert isinstance(twice.value.cause, ApplicationError)
        assert twice.value.cause.type == ErrorType.ILLEGAL_TRANSITION
        # Concurrent refunds queue on the lock: exactly 2000 in all reaches the network.
        results = await asyncio.gather(
            *(
                handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(800))
                for _ in range(3)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, WorkflowUpdateFailedError)]
        assert len(refused) == 1
        rest = await handle.execute_update(PaymentIntentWorkflow.refund, RefundInput())
        assert rest.intent_status is IntentStatus.REFUNDED
        assert (await handle.result()).status is IntentStatus.REFUNDED
    refunds = [r for kind, r in network.operations if kind == "refund"]
    assert sum(r.amount_in_cents for r in refunds) == 2000
    capture_reference = network.operations[0][1].network_reference
    assert {r.parent_reference for r in refunds} == {capture_reference}


async def test_unknown_capture_is_reconciled_and_blocks_other_operations(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[APPROVED], operation_answers=[UNKNOWN], status_answers=[UNKNOWN, APPROVED]
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=SHORT_WINDOW
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        captured = await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
        assert (captured.transaction_status, captured.intent_status) == (
            "timeout",
            IntentStatus.REQUIRES_CAPTURE,
        )
        with pytest.raises(WorkflowUpdateFailedError) as blocked:
            await handle.execute_update(PaymentIntentWorkflow.cancel, CancelInput())
        assert isinstance(blocked.value.cause, ApplicationError)
        assert blocked.value.cause.type == ErrorType.ATTEMPT_IN_FLIGHT
        # Reconciled, then the refund window (1 h) ends the run.
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    capture_reference = network.operations[0][1].network_reference
    assert network.status_queries == [capture_reference] * 2
    assert network.operation_outcomes[-1].reconciled is True
    assert len(network.operations) == 1  # never re-sent under a new reference


async def test_cancel_without_a_charge_ends_the_run(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, lifecycle=SHORT_WINDOW)
        result = await handle.execute_update(PaymentIntentWorkflow.cancel, CancelInput())
        assert result.transaction_id is None
        assert (await handle.result()).status is IntentStatus.CANCELED
    assert network.operations == []
