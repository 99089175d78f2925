"""Unknown outcomes on the time-skipping server: days of reconciliation run in seconds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from core.domain import IntentStatus, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, in_review, run_time, start_payment, wait_until
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import ManualReviewResolution, ReconcilePolicy

UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
# A short horizon so the review starts after a handful of queries: 2+4+8+16+32+60+60 s.
SHORT_HORIZON = ReconcilePolicy(first_delay_seconds=2, max_delay_seconds=60, horizon_seconds=180)


async def test_hours_of_status_queries_settle_a_late_approval(env: WorkflowEnvironment) -> None:
    # The network answers only after ~20 hours: 8 doubling queries, then one every 5 minutes.
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[*[UNKNOWN] * 240, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        waited = await run_time(handle)
    assert len(network.status_queries) == 241
    assert len(network.calls) == 1  # queried 241 times, never re-sent
    assert timedelta(hours=19) < waited < timedelta(hours=24)
    assert network.outcomes[-1].reconciled is True
    assert network.review_flags == []  # settled inside the horizon


async def test_past_the_horizon_the_payment_is_flagged_for_review_and_still_settles(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[*[UNKNOWN] * 12, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: in_review(handle))
        assert await handle.query(PaymentIntentWorkflow.current_status) is IntentStatus.PROCESSING
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        assert not await in_review(handle)
    assert len(network.review_flags) == 1
    assert network.review_flags[0].waited_seconds >= 180
    assert network.outcomes[-1].outcome is NetworkOutcome.APPROVED


async def test_operator_resolves_a_review_when_the_network_never_answers(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN])  # status queries answer "unknown" forever
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        # Not in review yet: an operator cannot overrule reconciliation that is still going on.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                PaymentIntentWorkflow.resolve_manual_review,
                ManualReviewResolution(NetworkOutcome.FAILED, "too early"),
            )
        await wait_until(env, lambda: in_review(handle))
        status = await handle.execute_update(
            PaymentIntentWorkflow.resolve_manual_review,
            ManualReviewResolution(NetworkOutcome.FAILED, "network confirms: never charged"),
        )
        assert status is IntentStatus.FAILED
        assert not await in_review(handle)
        # The merchant may now try another card.
        network.answers.append(APPROVED)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    settled = network.outcomes[1]
    assert (settled.outcome, settled.failure_code, settled.reconciled) == (
        NetworkOutcome.FAILED,
        "manual_review",
        True,
    )


async def test_a_network_outage_during_reconciliation_still_endsin_review(
    env: WorkflowEnvironment,
) -> None:
    down = ApplicationError("connection refused", type=ErrorType.NETWORK_UNAVAILABLE)
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[down] * 400)
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: in_review(handle))
        network.status_answers[:] = [APPROVED]  # the network is back, and had charged
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    assert len(network.review_flags) == 1
    assert len(network.calls) == 1


async def test_long_reconciliation_continues_as_new_with_its_state(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[*[UNKNOWN] * 40, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, max_history_events=60)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        first_run = handle.runs[0]
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        first_history = await env.client.get_workflow_handle(
            handle.id, run_id=first_run
        ).fetch_history()
        last_history = await handle.fetch_history()
        waited = (
            last_history.events[-1].event_time.ToDatetime()
            - first_history.events[0].event_time.ToDatetime()
        )
        last_run = (await handle.describe()).run_id
    assert first_history.events[-1].event_type == (
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )
    assert last_run != first_run
    # The chain kept its place: one network call, every query on the same reference, and the
    # backoff resumed where it stopped instead of starting over at 2 s.
    assert len(network.calls) == 1
    assert set(network.status_queries) == {network.calls[0].network_reference}
    assert len(network.status_queries) == 41
    doubling = sum(2 * 2**i for i in range(8))  # 2 s … 256 s, then every 300 s
    assert waited >= timedelta(seconds=doubling + 33 * 300)
