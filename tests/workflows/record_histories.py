"""Record a set of PaymentIntentWorkflow histories for tests/workflows/test_replay.py.

    .venv/bin/python -m tests.workflows.record_histories v4

Runs each scenario on the time-skipping server with the scripted network of `fakes.py` and
writes `histories/<prefix>_<scenario>.json`. Record a new set before a change to the workflow's
commands, so the replay test proves runs begun on today's code still replay on tomorrow's.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from cli.temporal_setup import add_search_attributes
from core.domain import CaptureMethod, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import TEST_SERVER, new_worker
from tests.workflows.fakes import CARD, FakeNetwork, in_review, start_payment, wait_until
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    CancelInput,
    LifecyclePolicy,
    ManualReviewResolution,
    ReconcilePolicy,
    RefundInput,
)

HISTORIES = Path(__file__).parent / "histories"
APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
SHORT_HORIZON = ReconcilePolicy(first_delay_seconds=2, max_delay_seconds=60, horizon_seconds=180)
Scenario = Callable[[WorkflowEnvironment], Awaitable[WorkflowHandle]]


async def unexpected_error_then_reconciled(env: WorkflowEnvironment) -> WorkflowHandle:
    """The network call fails in a way that proves nothing; reconciliation finds the charge."""
    boom = ApplicationError("unclassified", type="RuntimeError", non_retryable=True)
    network = FakeNetwork(answers=[boom], status_answers=[UNKNOWN, APPROVED])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.result()
    return handle


async def verdict_refused_by_the_network(env: WorkflowEnvironment) -> WorkflowHandle:
    """Manual review; the operator's `failed` is refused: asked once more, the network says
    approved. Then refunds until refunded."""
    network = FakeNetwork(answers=[UNKNOWN])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON,
                                     lifecycle=LifecyclePolicy(refund_window_seconds=3600))
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await wait_until(env, lambda: in_review(handle))
        network.status_answers[:] = [APPROVED]
        try:
            await handle.execute_update(
                PaymentIntentWorkflow.resolve_manual_review,
                ManualReviewResolution(NetworkOutcome.FAILED, "never charged?"))
        except WorkflowUpdateFailedError as error:
            assert isinstance(error.cause, ApplicationError)
            assert error.cause.type == ErrorType.VERDICT_CONTRADICTS_NETWORK
        await handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(), id="refund:k2")
        await handle.result()
    return handle


async def expiry_void_declined_until_review(env: WorkflowEnvironment) -> WorkflowHandle:
    """An authorization whose expiry void the network keeps declining: bounded retries, then a
    manual review; an operator cancels later (declined again), and the refund window is moot."""
    declined = NetworkAnswer(NetworkOutcome.DECLINED, "already_voided")
    network = FakeNetwork(answers=[APPROVED], operation_answers=[declined] * 5 + [APPROVED])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await start_payment(env, worker.task_queue, capture_method=CaptureMethod.MANUAL,
                                     lifecycle=LifecyclePolicy(authorization_expiry_seconds=3600))
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        while len(network.review_flags) < 1:
            await env.sleep(300)
        await handle.execute_update(PaymentIntentWorkflow.cancel, CancelInput(), id="cancel:k2")
        await handle.result()
    return handle


SCENARIOS: dict[str, Scenario] = {
    "unexpected_error_then_reconciled": unexpected_error_then_reconciled,
    "verdict_refused_by_the_network": verdict_refused_by_the_network,
    "expiry_void_declined_until_review": expiry_void_declined_until_review,
}


async def record(prefix: str) -> None:
    for name, scenario in SCENARIOS.items():
        async with await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(TEST_SERVER)) as env:
            await add_search_attributes(env.client, env.client.namespace)
            handle = await scenario(env)
            history = await handle.fetch_history()
        path = HISTORIES / f"{prefix}_{name}.json"
        path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
        print(f"recorded {path.name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "v4"))
