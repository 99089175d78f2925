"""A charge the network keeps not finding is reversed by reference, recorded first, and settled
by what the reversal's answer proves (time-skipping server, scripted activities)."""

from __future__ import annotations

import asyncio

from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from core.domain import IntentStatus, NetworkOutcome
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, run_time, start_payment
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import ReconcilePolicy
from workflows.payment_outcomes import CHARGE_REVERSED

UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
NOT_FOUND = NetworkAnswer(NetworkOutcome.UNKNOWN, not_found=True)
PENDING = UNKNOWN  # how the adapter reads `pending`
POLICY = ReconcilePolicy(
    first_delay_seconds=2, max_delay_seconds=60, horizon_seconds=86_400, reversal_after_seconds=60
)


async def _charge(env: WorkflowEnvironment, network: FakeNetwork) -> tuple[IntentStatus, float]:
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=POLICY)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        # Bounded: a payment left unknown would be reconciled (and waited for) for ever.
        status = (await asyncio.wait_for(handle.result(), timeout=60)).status
        return status, (await run_time(handle)).total_seconds()


async def test_a_charge_not_found_past_the_bound_is_reversed_and_fails(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[NOT_FOUND] * 20)
    status, seconds = await _charge(env, network)
    assert status is IntentStatus.FAILED
    txn = network.attempts[0].transaction_id
    reference = f"{txn}:reversal"
    # Recorded before it is sent, and sent once: 2+4+8+16+32 = 62 s, the first `not_found`
    # past 60 s, not the 900 s safe age.
    assert network.reversal_steps == [f"record {reference}", f"send {reference}"]
    assert (
        network.reversals[0].parent_reference,
        network.reversals[0].amount_in_cents,
        network.reversals[0].currency,
    ) == (txn, 2499, "usd")
    assert seconds < 120
    outcome = network.outcomes[-1]
    assert (outcome.outcome, outcome.failure_code, outcome.reconciled) == (
        NetworkOutcome.FAILED,
        CHARGE_REVERSED,
        True,
    )


async def test_a_pending_charge_is_never_reversed(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(
        answers=[UNKNOWN], status_answers=[*[PENDING] * 8, NetworkAnswer(NetworkOutcome.APPROVED)]
    )
    status, _ = await _charge(env, network)
    assert status is IntentStatus.SUCCEEDED
    assert network.reversal_steps == []


async def test_a_reversal_whose_answer_is_lost_is_reconciled_by_its_status(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[UNKNOWN],
        status_answers=[NOT_FOUND] * 20,
        reversal_answers=[UNKNOWN],
        reversal_status_answers=[NetworkAnswer(NetworkOutcome.APPROVED)],
    )
    status, _ = await _charge(env, network)
    assert status is IntentStatus.FAILED
    reference = f"{network.attempts[0].transaction_id}:reversal"
    assert network.reversal_steps == [f"record {reference}", f"send {reference}"]
    # After the reversal, only the reversal is asked about, never the original again.
    assert network.status_queries[-1] == reference
    assert network.outcomes[-1].failure_code == CHARGE_REVERSED


async def test_a_reversal_the_network_never_got_is_sent_again_under_its_reference(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[UNKNOWN],
        status_answers=[NOT_FOUND] * 20,
        reversal_answers=[UNKNOWN, NetworkAnswer(NetworkOutcome.APPROVED)],
        reversal_status_answers=[NOT_FOUND],
    )
    status, _ = await _charge(env, network)
    assert status is IntentStatus.FAILED
    reference = f"{network.attempts[0].transaction_id}:reversal"
    assert network.reversal_steps == [
        f"record {reference}",
        f"send {reference}",
        f"send {reference}",
    ]


async def test_a_reversal_refused_because_the_charge_was_captured_means_it_succeeded(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(
        answers=[UNKNOWN],
        status_answers=[NOT_FOUND] * 20,
        reversal_answers=[NetworkAnswer(NetworkOutcome.DECLINED, "already_captured")],
    )
    status, _ = await _charge(env, network)
    assert status is IntentStatus.SUCCEEDED


async def test_a_reversal_of_a_declined_charge_fails_it(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(
        answers=[UNKNOWN],
        status_answers=[NOT_FOUND] * 20,
        reversal_answers=[NetworkAnswer(NetworkOutcome.DECLINED, "original_declined")],
    )
    status, seconds = await _charge(env, network)
    assert status is IntentStatus.FAILED
    assert network.outcomes[-1].failure_code == CHARGE_REVERSED
    assert seconds < 120


async def test_status_queries_never_answered_lead_to_a_reversal(env: WorkflowEnvironment) -> None:
    network = FakeNetwork(answers=[UNKNOWN], status_answers=[RuntimeError("status API down")] * 60)
    status, _ = await _charge(env, network)
    assert status is IntentStatus.FAILED
    assert len(network.reversals) == 1
