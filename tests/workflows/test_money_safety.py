"""A payment's bad day on the time-skipping server: errors nobody expected, answers that prove
nothing, operators and late answers, deadlines. Each ends settled or watched by a durable timer.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from core.domain import CaptureMethod, IntentStatus, NetworkOutcome, transaction_id_for
from core.errors import ErrorType
from tests.workflows.conftest import new_worker, time_skipping
from tests.workflows.fakes import (
    CARD,
    FakeNetwork,
    PaymentHandle,
    in_review,
    run_time,
    start_payment,
    wait_until,
)
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    CancelInput,
    CaptureInput,
    LifecyclePolicy,
    ManualReviewResolution,
    ReconcilePolicy,
    RefundInput,
)
from workflows.payment_state import EXPIRY_VOID_MAX_FAILURES

APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
DECLINED = NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline")
UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
NOT_FOUND = NetworkAnswer(NetworkOutcome.UNKNOWN, not_found=True)
SHORT_HORIZON = ReconcilePolicy(first_delay_seconds=2, max_delay_seconds=60, horizon_seconds=180)


# ---- 1. an error nobody expected is an unknown outcome, never a stranded payment -------------
@pytest.mark.parametrize(
    "failure",
    [
        ApplicationError(
            "card token not found", type=ErrorType.VAULT_TOKEN_MISSING, non_retryable=True
        ),
        ApplicationError("unclassified", type="JSONDecodeError", non_retryable=True),
    ],
    ids=["vault-token-missing", "unclassified-error"],
)
async def test_a_charge_whose_call_fails_unexpectedly_is_reconciled(
    env: WorkflowEnvironment, failure: Exception
) -> None:
    network = FakeNetwork(answers=[failure], status_answers=[UNKNOWN, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (result.transaction_status, result.intent_status) == (
            "timeout",
            IntentStatus.PROCESSING,
        )
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    assert [o.outcome for o in network.outcomes] == [
        NetworkOutcome.UNKNOWN,
        NetworkOutcome.APPROVED,
    ]
    assert network.status_queries == [result.transaction_id] * 2


async def test_a_refused_request_the_network_documents_as_not_processed_fails(
    env: WorkflowEnvironment,
) -> None:
    rejected = ApplicationError(
        "422 invalid_request", type=ErrorType.NETWORK_REJECTED_REQUEST, non_retryable=True
    )
    network = FakeNetwork(answers=[rejected])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (result.transaction_status, result.intent_status) == ("failed", IntentStatus.FAILED)
    assert network.status_queries == []
    assert network.outcomes[-1].failure_code == "processing_error"


async def test_an_expiry_void_that_fails_unexpectedly_is_reconciled_not_the_workflow(
    env: WorkflowEnvironment,
) -> None:
    boom = ApplicationError("unclassified", type="RuntimeError", non_retryable=True)
    network = FakeNetwork(answers=[APPROVED], operation_answers=[boom], status_answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=LifecyclePolicy()
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (await handle.result()).status is IntentStatus.CANCELED
    [(kind, void)] = network.operations
    assert kind == "void"
    assert network.status_queries == [void.network_reference]
    assert network.operation_outcomes[-1].reconciled is True


# ---- 2. the transaction an Update creates is named by the Update's id ------------------------
async def test_the_transaction_id_is_derived_from_the_update_id(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[DECLINED, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        first = await handle.execute_update(
            PaymentIntentWorkflow.confirm_charge, CARD, id="charge:first"
        )
        second = await handle.execute_update(
            PaymentIntentWorkflow.confirm_charge, CARD, id="charge:second"
        )
    assert first.transaction_id == transaction_id_for(handle.id, "charge:first")
    assert second.transaction_id == transaction_id_for(handle.id, "charge:second")
    assert [c.network_reference for c in network.calls] == [
        first.transaction_id,
        second.transaction_id,
    ]


# ---- 4. the refund window never closes the run over a refund in flight -----------------------
async def test_a_refund_in_flight_when_the_window_ends_is_still_reconciled(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[APPROVED], operation_answers=[UNKNOWN], status_answers=[APPROVED]
    )
    held = asyncio.Event()
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        # A window of a few real seconds: time does not skip while an activity is running.
        handle = await start_payment(
            env, worker.task_queue, lifecycle=LifecyclePolicy(refund_window_seconds=4)
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        network.operation_outcome_hold = held  # the refund's answer is recorded late
        refund = asyncio.create_task(
            handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(1000))
        )
        while not network.operations:
            await asyncio.sleep(0.05)
        await asyncio.sleep(5)  # the refund window ends while the refund is in flight
        held.set()
        result = await refund
        assert result.transaction_status == "timeout"
        assert (await handle.result()).status is IntentStatus.PARTIALLY_REFUNDED
    assert network.status_queries == [result.transaction_id]
    assert [o.outcome for o in network.operation_outcomes] == [
        NetworkOutcome.UNKNOWN,
        NetworkOutcome.APPROVED,
    ]


# ---- 5. an operator's verdict never overrides the network ------------------------------------
async def test_a_verdict_that_the_network_contradicts_is_refused(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[UNKNOWN])  # "unknown" until the operator looks
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: in_review(handle))
        network.status_answers[:] = [APPROVED]  # asked once more, the network has charged
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                PaymentIntentWorkflow.resolve_manual_review,
                ManualReviewResolution(NetworkOutcome.FAILED, "looked like nothing happened"),
            )
        assert isinstance(refused.value.cause, ApplicationError)
        assert refused.value.cause.type == ErrorType.VERDICT_CONTRADICTS_NETWORK
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    assert [o.outcome for o in network.outcomes][-1] is NetworkOutcome.APPROVED
    assert all(o.failure_code != "manual_review" for o in network.outcomes)


async def test_a_late_answer_contradicting_a_verdict_opens_a_discrepancy(
    env: WorkflowEnvironment,
) -> None:
    hold = asyncio.Event()
    # Query 7 (the first after the horizon) is in flight while the operator resolves; the
    # operator's own query finds nothing, the late one says the card was charged.
    network = FakeNetwork(
        answers=[UNKNOWN],
        status_answers=[*[UNKNOWN] * 8, APPROVED],
        status_hold_at=7,
        status_hold=hold,
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: in_review(handle))
        # Skip to query 7 in small steps: once it is in flight (an activity running), time
        # passes in real seconds only, well inside its 20 s timeout.
        await wait_until(env, lambda: _queried(network, 8), step=5)
        status = await handle.execute_update(
            PaymentIntentWorkflow.resolve_manual_review,
            ManualReviewResolution(NetworkOutcome.FAILED, "network support: never charged"),
        )
        assert status is IntentStatus.FAILED
        hold.set()
        await wait_until(env, lambda: _discrepancy(network), step=1)
        assert await handle.query(PaymentIntentWorkflow.current_status) is IntentStatus.FAILED
    [found] = network.discrepancies
    assert (found.recorded, found.network) == (NetworkOutcome.FAILED, NetworkOutcome.APPROVED)


async def _queried(network: FakeNetwork, count: int) -> bool:
    return len(network.status_queries) >= count


async def _status_is(
    handle: WorkflowHandle[Any, Any] | PaymentHandle, status: IntentStatus
) -> bool:
    return await handle.query(PaymentIntentWorkflow.current_status) is status


async def _discrepancy(network: FakeNetwork) -> bool:
    return bool(network.discrepancies)


# ---- 6. settling happens under the lock, with the operation still in flight ------------------
async def test_a_capture_cannot_slip_past_a_void_being_settled(env: WorkflowEnvironment) -> None:
    held = asyncio.Event()
    network = FakeNetwork(
        answers=[APPROVED], operation_answers=[UNKNOWN], status_answers=[APPROVED]
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env,
            worker.task_queue,
            capture_method=CaptureMethod.MANUAL,
            lifecycle=LifecyclePolicy(refund_window_seconds=3600),
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        voided = await handle.execute_update(PaymentIntentWorkflow.cancel, CancelInput())
        assert voided.transaction_status == "timeout"
        network.operation_outcome_hold = held  # the void's settling stops half-way
        await wait_until(env, lambda: _queried(network, 1), step=1)
        # Sent while the void is half-settled: it can only be refused, once the void is
        # settled (the database write holds the workflow task) or as in flight.
        capture = asyncio.create_task(
            handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
        )
        await asyncio.sleep(1)
        held.set()
        with pytest.raises(WorkflowUpdateFailedError) as blocked:
            await asyncio.wait_for(capture, 30)
        assert isinstance(blocked.value.cause, ApplicationError)
        assert blocked.value.cause.type in (
            ErrorType.ATTEMPT_IN_FLIGHT,
            ErrorType.ILLEGAL_TRANSITION,
        )
        assert (await handle.result()).status is IntentStatus.CANCELED
    assert [kind for kind, _ in network.operations] == ["void"]


async def test_an_operation_queued_behind_an_unknown_one_waits_for_it_instead_of_failing(
    env: WorkflowEnvironment,
) -> None:
    """Both refunds are accepted; the first comes back unknown. The second waits for the
    reconciliation and then runs: had it failed, its refusal would be stored under its Update
    id and the merchant's retry with the same Idempotency-Key would get it for ever."""
    network = FakeNetwork(
        answers=[APPROVED],
        operation_answers=[UNKNOWN, APPROVED],
        status_answers=[UNKNOWN, APPROVED],
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, lifecycle=LifecyclePolicy(refund_window_seconds=3600)
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        async with time_skipping(env):  # the status queries' interval
            results = await asyncio.gather(
                handle.execute_update(
                    PaymentIntentWorkflow.refund, RefundInput(500), id="refund:a"
                ),
                handle.execute_update(
                    PaymentIntentWorkflow.refund, RefundInput(600), id="refund:b"
                ),
            )
        # Either may take the lock first: the first to run is the unknown one.
        first, second = sorted(results, key=lambda r: r.transaction_status != "timeout")
        assert first.transaction_status == "timeout"
        assert (second.transaction_status, second.intent_status) == (
            "succeeded",
            IntentStatus.PARTIALLY_REFUNDED,
        )
    assert [kind for kind, _ in network.operations] == ["refund", "refund"]
    # The second was sent only once the first was settled by a status query.
    assert network.status_queries[-1] == first.transaction_id
    assert [(o.transaction_id, o.reconciled) for o in network.operation_outcomes] == [
        (first.transaction_id, False),
        (first.transaction_id, True),
        (second.transaction_id, False),
    ]


# ---- 7. `not_found` is believed only past the safe age ---------------------------------------
async def test_not_found_is_unknown_until_the_attempt_is_old_enough(
    env: WorkflowEnvironment,
) -> None:
    policy = ReconcilePolicy(
        first_delay_seconds=2,
        max_delay_seconds=60,
        horizon_seconds=86_400,
        not_found_safe_age_seconds=120,
        reversals=False,
    )
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[NOT_FOUND] * 20)
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=policy)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: _status_is(handle, IntentStatus.FAILED), step=10)
    # 2+4+8+16+32+60 = 122 s: the sixth `not_found` is the first one old enough to believe.
    assert len(network.status_queries) == 6
    assert network.outcomes[-1].outcome is NetworkOutcome.FAILED


async def test_not_found_then_approved_within_the_safe_age_succeeds(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[*[NOT_FOUND] * 4, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert (await handle.result()).status is IntentStatus.SUCCEEDED


# ---- 9. expiry: the network's clock, and a bounded number of voids ---------------------------
async def test_the_expiry_clock_starts_when_the_network_authorized(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env,
            worker.task_queue,
            capture_method=CaptureMethod.MANUAL,
            lifecycle=LifecyclePolicy(authorization_expiry_seconds=86_400),
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        started = (await handle.describe()).start_time
        assert started is not None
        # Reconciled 43 minutes after the network authorized (its clock: the run's start).
        # No time passes before this: the server skips time only while the test waits.
        network.status_answers[:] = [UNKNOWN] * 15 + [
            NetworkAnswer(NetworkOutcome.APPROVED, network_time=started.timestamp())
        ]
        assert (await handle.result()).status is IntentStatus.CANCELED
        waited = await run_time(handle)
    assert timedelta(days=1) <= waited < timedelta(days=1, minutes=10)


async def test_an_expiry_void_the_network_keeps_declining_goes_to_an_operator(
    env: WorkflowEnvironment,
) -> None:
    declined = NetworkAnswer(NetworkOutcome.DECLINED, "already_voided")
    network = FakeNetwork(answers=[APPROVED], operation_answers=[declined] * 20)
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env,
            worker.task_queue,
            capture_method=CaptureMethod.MANUAL,
            lifecycle=LifecyclePolicy(authorization_expiry_seconds=3600),
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await wait_until(env, lambda: in_review(handle), step=300)
        await env.sleep(86_400)  # a day later: no more voids by itself
        assert await handle.query(PaymentIntentWorkflow.current_status) is (
            IntentStatus.REQUIRES_CAPTURE
        )
        # The operator captures (or cancels) by hand; the payment goes on.
        captured = await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
        assert captured.transaction_status == "failed"  # the scripted network declines all
    voids = [r for kind, r in network.operations if kind == "void"]
    assert len(voids) == EXPIRY_VOID_MAX_FAILURES
    assert len({v.network_reference for v in voids}) == EXPIRY_VOID_MAX_FAILURES
    assert network.review_flags[-1].reason


# ---- 11. a write the database will never accept is not retried; an operator is asked --------
async def test_an_outcome_the_database_refuses_is_watched_and_flagged(
    env: WorkflowEnvironment,
) -> None:
    refused = ApplicationError(
        "cannot succeed a transaction in status failed",
        type=ErrorType.RECORD_REFUSED,
        non_retryable=True,
    )
    network = FakeNetwork(
        answers=[APPROVED], status_answers=[APPROVED] * 3, outcome_refusals=[refused]
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        result = await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        assert result.intent_status is IntentStatus.PROCESSING
        # Flagged at once, and the next status query records the network's answer.
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
        assert not await in_review(handle)
    assert len(network.review_flags) == 1
    assert network.status_queries == [result.transaction_id]
