"""What a payment's run owes at its edges: nothing planned is dropped when it continues as new,
and a run that starts finds and watches an attempt its predecessor left unsettled."""

from __future__ import annotations

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import NetworkAnswer
from activities.webhooks import AttemptInput, AttemptResult, SentAttempt
from core.domain import CaptureMethod, IntentStatus, NetworkOutcome, transaction_id_for
from core.errors import ErrorType
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, PaymentHandle, start_payment
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import CaptureInput, LifecyclePolicy
from workflows.webhook_delivery import WebhookDeliveryWorkflow

APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)
SHORT_WINDOW = LifecyclePolicy(refund_window_seconds=3600)


@activity.defn(name="send_webhook")
async def send_webhook(attempt: AttemptInput) -> SentAttempt:
    return SentAttempt(attempt.delivery_id, attempt.attempt_number, closed=AttemptResult.DELIVERED)


async def _charge_and_capture(handle: PaymentHandle) -> None:
    """As the API does: an operation refused because the run is about to continue as new is
    sent again (the merchant's retry), and lands in the next run."""
    await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
    for _ in range(5):
        try:
            await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
            return
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            if not (
                isinstance(cause, ApplicationError) and cause.type == ErrorType.ATTEMPT_IN_FLIGHT
            ):
                raise
    raise AssertionError("the capture was refused five times")


async def _continued_as_new_after_capturing(
    env: WorkflowEnvironment, handle: PaymentHandle
) -> bool:
    """The payment's first run completed the capture, then continued as new: the limit was
    crossed while the capture ran (the run waited for its handler before continuing)."""
    first = await env.client.get_workflow_handle(handle.id, run_id=handle.runs[0]).fetch_history()
    updates = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        for e in first.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    return (
        "capture" in updates
        and first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )


async def _not_started(env: WorkflowEnvironment, delivery_ids: list[str]) -> list[str]:
    missing = []
    for delivery_id in delivery_ids:
        try:
            await env.client.get_workflow_handle(delivery_id).describe()
        except RPCError:
            missing.append(delivery_id)
    return missing


async def test_deliveries_planned_while_continuing_as_new_are_started(
    env: WorkflowEnvironment,
) -> None:
    # Every history limit from just after the charge to just after the capture, so the run's
    # crossing falls before the capture, inside it (it waits for the capture's handler, which
    # plans `payment.succeeded`'s delivery), and after it.
    network = FakeNetwork(answers=[APPROVED] * 40, deliveries_per_event=1)
    async with new_worker(
        env.client,
        PaymentIntentWorkflow,
        WebhookDeliveryWorkflow,
        activities=[*network.activities(), send_webhook],
    ) as worker:
        probe = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=SHORT_WINDOW
        )
        await probe.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        charged = len((await probe.fetch_history()).events)
        await probe.execute_update(PaymentIntentWorkflow.capture, CaptureInput())
        captured = len((await probe.fetch_history()).events)
        assert (await probe.result()).status is IntentStatus.SUCCEEDED
        inside_the_capture = 0
        for limit in range(charged + 1, captured + 2):
            network.status = "created"
            handle = await start_payment(
                env,
                worker.task_queue,
                capture_method=CaptureMethod.MANUAL,
                lifecycle=SHORT_WINDOW,
                max_history_events=limit,
            )
            await _charge_and_capture(handle)
            assert (await handle.result()).status is IntentStatus.SUCCEEDED
            inside_the_capture += await _continued_as_new_after_capturing(env, handle)
    assert inside_the_capture > 0  # the sweep did hit the case
    # processing, requires_capture, succeeded: for the probe and each limit
    assert len(network.planned_deliveries) == 3 * (captured - charged + 2)
    assert await _not_started(env, network.planned_deliveries) == []


async def test_a_run_that_starts_watches_an_attempt_left_unsettled(
    env: WorkflowEnvironment,
) -> None:
    # `record_charge_attempt` committed the pending charge, then Temporal lost the Update that
    # wrote it: the next run (started by anything, here a bare start) must not end at rest.
    network = FakeNetwork(answers=[], status_answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        lost = transaction_id_for(handle.id, "confirm_charge:lost")
        network.seed_charge(handle.id, lost, None, status="processing")
        await env.client.start_workflow(
            PaymentIntentWorkflow.run, handle.input, id=handle.id, task_queue=worker.task_queue
        )
        assert (await handle.result()).status is IntentStatus.SUCCEEDED
    assert network.status_queries == [lost]
    assert network.calls == []  # watched by status queries, never sent again
    assert (network.outcomes[-1].transaction_id, network.outcomes[-1].reconciled) == (lost, True)


async def test_a_charge_answered_in_an_earlier_run_brings_its_money(
    env: WorkflowEnvironment,
) -> None:
    # The API retried a charge (same Update id) after the run that answered it had closed: the
    # new run answers with the recorded charge, and knows the authorization it holds.
    network = FakeNetwork(answers=[])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(
            env, worker.task_queue, capture_method=CaptureMethod.MANUAL, lifecycle=SHORT_WINDOW
        )
        update_id = "confirm_charge:k1"
        charged = transaction_id_for(handle.id, update_id)
        network.seed_charge(handle.id, charged, NetworkOutcome.APPROVED, status="requires_capture")
        again = await handle.execute_update(
            PaymentIntentWorkflow.confirm_charge, CARD, id=update_id
        )
        assert (again.transaction_id, again.intent_status) == (
            charged,
            IntentStatus.REQUIRES_CAPTURE,
        )
        captured = await handle.execute_update(PaymentIntentWorkflow.capture, CaptureInput(1000))
        assert captured.intent_status is IntentStatus.SUCCEEDED
    assert network.calls == []  # answered before: not sent again
    [(kind, capture)] = network.operations
    assert (kind, capture.parent_reference, capture.amount_in_cents) == ("capture", charged, 1000)
