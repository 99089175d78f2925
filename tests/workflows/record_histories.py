"""Record a set of PaymentIntentWorkflow histories for tests/workflows/test_replay.py.

    .venv/bin/python -m tests.workflows.record_histories baseline

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
from typing import Any

from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from activities.webhooks import AttemptOutcome, AttemptResult
from cli.temporal_setup import add_search_attributes
from core.domain import CaptureMethod, NetworkOutcome
from core.errors import ErrorType
from tests.workflows.conftest import TEST_SERVER, new_worker
from tests.workflows.fakes import (
    CARD,
    FakeNetwork,
    PaymentHandle,
    in_review,
    start_payment,
    wait_until,
)
from tests.workflows.record_delivery_histories import scripted_activities
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    CancelInput,
    CaptureInput,
    LifecyclePolicy,
    ManualReviewResolution,
    ReconcilePolicy,
    RefundInput,
    addressed,
)
from workflows.webhook_delivery import WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories"
APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
UNKNOWN = NetworkAnswer(NetworkOutcome.UNKNOWN)
SHORT_HORIZON = ReconcilePolicy(first_delay_seconds=2, max_delay_seconds=60, horizon_seconds=180)
Scenario = Callable[[WorkflowEnvironment], Awaitable[PaymentHandle]]


async def approved_with_webhooks(env: WorkflowEnvironment) -> PaymentHandle:
    """The happy automatic charge; one endpoint subscribed, so its deliveries start."""
    network = FakeNetwork(answers=[APPROVED], deliveries_per_event=1)
    async with new_worker(
        env.client,
        PaymentIntentWorkflow,
        WebhookDeliveryWorkflow,
        activities=[*network.activities(), *delivered_webhooks()],
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.result()
    return handle


async def declined_then_approved(env: WorkflowEnvironment) -> PaymentHandle:
    """A decline ends the first run; the second charge opens a second run."""
    network = FakeNetwork(
        answers=[NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline"), APPROVED]
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.result()
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k2")
        await handle.result()
    return handle


async def unexpected_error_then_reconciled(env: WorkflowEnvironment) -> PaymentHandle:
    """The network call fails in a way that proves nothing; reconciliation finds the charge."""
    boom = ApplicationError("unclassified", type="RuntimeError", non_retryable=True)
    network = FakeNetwork(answers=[boom], status_answers=[UNKNOWN, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.result()
    return handle


async def verdict_refused_by_the_network(env: WorkflowEnvironment) -> PaymentHandle:
    """Manual review; the operator's `failed` is refused: asked once more, the network says
    approved. A refund later opens a run that reads the payment from the database."""
    network = FakeNetwork(answers=[UNKNOWN])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue, reconcile=SHORT_HORIZON)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await wait_until(env, lambda: in_review(handle))
        network.status_answers[:] = [APPROVED]
        try:
            await handle.latest().execute_update(
                PaymentIntentWorkflow.resolve_manual_review,
                addressed(
                    ManualReviewResolution(NetworkOutcome.FAILED, "never charged?"),
                    PaymentIntentWorkflow.resolve_manual_review,
                    payment_intent_id=handle.id,
                    update_id="review:k1",
                ),
                id="review:k1",
            )
        except WorkflowUpdateFailedError as error:
            assert isinstance(error.cause, ApplicationError)
            assert error.cause.type == ErrorType.VERDICT_CONTRADICTS_NETWORK
        await handle.result()
        await handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(), id="refund:k2")
        await handle.result()
    return handle


async def manual_capture_unknown_then_refunds(env: WorkflowEnvironment) -> PaymentHandle:
    """An authorization; its capture's answer is lost and reconciled; two refunds, each in a
    run of its own, the second after the refund window closed (refused)."""
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
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput(), id="capture:k2")
        await handle.result()
        network.succeeded_at = (await env.get_current_time()).timestamp()
        await handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(1000), id="refund:k3")
        await handle.result()
        await env.sleep(7200)
        try:
            await handle.execute_update(PaymentIntentWorkflow.refund, RefundInput(), id="refund:k4")
        except WorkflowUpdateFailedError as error:
            assert isinstance(error.cause, ApplicationError)
            assert error.cause.type == ErrorType.ILLEGAL_TRANSITION
        await handle.result()
    return handle


async def authorization_expired(env: WorkflowEnvironment) -> PaymentHandle:
    """Nobody captures: the authorization is voided by itself when it expires."""
    network = FakeNetwork(answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env,
            worker.task_queue,
            capture_method=CaptureMethod.MANUAL,
            lifecycle=LifecyclePolicy(authorization_expiry_seconds=3600),
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        await handle.result()
    return handle


async def expiry_void_declined_until_review(env: WorkflowEnvironment) -> PaymentHandle:
    """An authorization whose expiry void the network keeps declining: bounded retries, then a
    manual review; an operator cancels later."""
    declined = NetworkAnswer(NetworkOutcome.DECLINED, "already_voided")
    network = FakeNetwork(answers=[APPROVED], operation_answers=[*[declined] * 5, APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env,
            worker.task_queue,
            capture_method=CaptureMethod.MANUAL,
            lifecycle=LifecyclePolicy(authorization_expiry_seconds=3600),
        )
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD, id="charge:k1")
        while len(network.review_flags) < 1:
            await env.sleep(300)
        await handle.execute_update(PaymentIntentWorkflow.cancel, CancelInput(), id="cancel:k2")
        await handle.result()
    return handle


def delivered_webhooks() -> list[Callable[..., Any]]:
    """Every attempt of the payment's deliveries (its child workflows) delivered."""
    return scripted_activities([AttemptOutcome(AttemptResult.DELIVERED)])


SCENARIOS: dict[str, Scenario] = {
    "approved_with_webhooks": approved_with_webhooks,
    "declined_then_approved": declined_then_approved,
    "unexpected_error_then_reconciled": unexpected_error_then_reconciled,
    "verdict_refused_by_the_network": verdict_refused_by_the_network,
    "manual_capture_unknown_then_refunds": manual_capture_unknown_then_refunds,
    "authorization_expired": authorization_expired,
    "expiry_void_declined_until_review": expiry_void_declined_until_review,
}


async def record(prefix: str) -> None:
    """One file per run of each scenario's payment: `<prefix>_<scenario>_run<N>.json`."""
    for name, scenario in SCENARIOS.items():
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(TEST_SERVER)
        ) as env:
            await add_search_attributes(env.client, env.client.namespace)
            handle = await scenario(env)
            for number, run_id in enumerate(handle.runs, start=1):
                history = await env.client.get_workflow_handle(
                    handle.id, run_id=run_id
                ).fetch_history()
                path = HISTORIES / f"{prefix}_{name}_run{number}.json"
                path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
                print(f"recorded {path.name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "baseline"))
