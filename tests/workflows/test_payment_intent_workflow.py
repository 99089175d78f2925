"""PaymentIntentWorkflow on the time-skipping server, with the activities mocked."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from core import search_attributes
from core.domain import IntentStatus, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import new_worker, time_skipping
from tests.workflows.fakes import CARD, FakeNetwork, start_payment
from workflows.payment_intent import PaymentIntentWorkflow


async def test_approved_charge_succeeds_and_ends_the_workflow(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.APPROVED)])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert result.transaction_status == "succeeded"
        assert result.intent_status is IntentStatus.SUCCEEDED
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(search_attributes.STATUS) == "succeeded"
    # The attempt is recorded before the network is called, under the same reference.
    assert network.attempts[0].transaction_id == network.calls[0].network_reference
    assert network.calls[0].capture is True
    assert network.calls[0].card_token_id == "card_1"


async def test_decline_allows_a_second_attempt_with_a_new_reference(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[
            NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline"),
            NetworkAnswer(NetworkOutcome.APPROVED),
        ]
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        first = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (first.transaction_status, first.decline_code) == ("failed", "generic_decline")
        assert await handle.query(PaymentIntentWorkflow.current_status) is IntentStatus.FAILED
        second = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert second.transaction_status == "succeeded"
        await handle.result()
    refs = [c.network_reference for c in network.calls]
    assert len(set(refs)) == 2


async def test_network_5xx_retries_with_the_same_reference_then_fails_cleanly(
    env: WorkflowEnvironment,
) -> None:
    unavailable = ApplicationError("503", type=ErrorType.NETWORK_UNAVAILABLE)
    network = FakeNetwork(answers=[unavailable] * 4)
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        async with time_skipping(env):  # the retries' backoff
            result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
    assert result.transaction_status == "failed"
    assert network.outcomes[-1].failure_code == "processing_error"
    assert len(network.calls) == 4
    assert len({c.network_reference for c in network.calls}) == 1


async def test_unknown_outcome_is_reconciled_by_status_queries(env: WorkflowEnvironment) -> None:
    pending = NetworkAnswer(NetworkOutcome.UNKNOWN)
    network = FakeNetwork(
        answers=[NetworkAnswer(NetworkOutcome.UNKNOWN)],
        status_answers=[*[pending] * 5, NetworkAnswer(NetworkOutcome.APPROVED)],
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
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
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        first = asyncio.create_task(
            handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        )
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
