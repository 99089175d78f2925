"""WebhookDeliveryWorkflow and starting deliveries on the time-skipping server, activities
mocked."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment

# This module defines a workflow, so the sandbox re-imports it: pass the I/O modules through.
with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        AttemptInput,
        AttemptOutcome,
        AttemptResult,
        FailInput,
    )
    from core.webhooks import WebhookSchedule
    from tests.workflows.conftest import new_worker
    from workflows.webhook_delivery import (
        WebhookDeliveryInput,
        WebhookDeliveryResult,
        WebhookDeliveryWorkflow,
    )
    from workflows.webhook_fanout import start_deliveries

SCHEDULE = WebhookSchedule()  # production timings: 5 s, 25 s, 125 s … 1 h, for 3 days


@dataclass
class FakeReceiver:
    """Scripted attempt outcomes; records when (in workflow time) each attempt was scheduled."""

    outcomes: list[AttemptOutcome]
    attempts: list[tuple[int, datetime]] = field(default_factory=list)
    failed: list[tuple[str, datetime]] = field(default_factory=list)

    def activities(self) -> list[object]:
        @activity.defn(name="deliver_webhook")
        async def deliver_webhook(attempt: AttemptInput) -> AttemptOutcome:
            self.attempts.append((attempt.attempt_number,
                                  activity.info().current_attempt_scheduled_time))
            if len(self.outcomes) > 1:
                return self.outcomes.pop(0)
            return self.outcomes[0]  # the last outcome repeats forever

        @activity.defn(name="fail_webhook_delivery")
        async def fail_webhook_delivery(failed: FailInput) -> None:
            self.failed.append((failed.delivery_id, activity.info().current_attempt_scheduled_time))

        return [deliver_webhook, fail_webhook_delivery]

    def gaps(self) -> list[float]:
        times = [t for _, t in self.attempts]
        return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


RETRY = AttemptOutcome(AttemptResult.RETRY)
DELIVERED = AttemptOutcome(AttemptResult.DELIVERED)


async def _deliver(env: WorkflowEnvironment, receiver: FakeReceiver) -> WebhookDeliveryResult:
    async with new_worker(env.client, WebhookDeliveryWorkflow,
                          activities=receiver.activities()) as worker:
        return await env.client.execute_workflow(
            WebhookDeliveryWorkflow.run, WebhookDeliveryInput("whd_test", SCHEDULE),
            id=f"whd_{uuid.uuid4().hex}", task_queue=worker.task_queue)


def _close(actual: list[float], expected: list[float]) -> bool:
    return len(actual) == len(expected) and all(
        e <= a < e + 2 for a, e in zip(actual, expected, strict=True))


async def test_failures_are_retried_with_exponential_backoff(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([RETRY, RETRY, RETRY, DELIVERED])
    result = await _deliver(env, receiver)
    assert result == WebhookDeliveryResult(delivered=True, attempts=4)
    assert [n for n, _ in receiver.attempts] == [1, 2, 3, 4]
    assert _close(receiver.gaps(), [5, 25, 125]), receiver.gaps()
    assert receiver.failed == []


async def test_retry_after_is_honoured(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=600),
                             AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=1),
                             DELIVERED])
    result = await _deliver(env, receiver)
    assert result.delivered
    # Not before the 600 s asked, and a short Retry-After never shortens the backoff (25 s).
    assert _close(receiver.gaps(), [600, 25]), receiver.gaps()


async def test_gone_stops_at_once(env: WorkflowEnvironment) -> None:
    # The activity disables the endpoint on a 410 and answers STOP; nothing is retried.
    receiver = FakeReceiver([AttemptOutcome(AttemptResult.STOP)])
    result = await _deliver(env, receiver)
    assert result == WebhookDeliveryResult(delivered=False, attempts=1)
    assert receiver.failed == []


async def test_three_day_horizon_fails_the_delivery(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([RETRY])
    result = await _deliver(env, receiver)
    assert result == WebhookDeliveryResult(delivered=False, attempts=77)
    gaps = receiver.gaps()
    assert _close(gaps[:6], [5, 25, 125, 625, 3125, 3600]), gaps[:6]
    assert max(gaps) < 3600 + 2
    first = receiver.attempts[0][1]
    last = receiver.attempts[-1][1]
    assert abs((last - first).total_seconds() - SCHEDULE.horizon_seconds) < 60
    assert [d for d, _ in receiver.failed] == ["whd_test"]
    assert (receiver.failed[0][1] - first).total_seconds() >= SCHEDULE.horizon_seconds - 1


async def test_retry_after_beyond_the_horizon_fails_at_the_horizon(
        env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=10**7)])
    result = await _deliver(env, receiver)
    assert result == WebhookDeliveryResult(delivered=False, attempts=1)
    waited = (receiver.failed[0][1] - receiver.attempts[0][1]).total_seconds()
    assert SCHEDULE.horizon_seconds - 1 <= waited < SCHEDULE.horizon_seconds + 60


@dataclass
class FanoutInput:
    delivery_ids: list[str]


@workflow.defn
class FanoutParentWorkflow:
    """Stands in for PaymentIntentWorkflow: starts the deliveries twice, then ends (the
    children go on)."""

    @workflow.run
    async def run(self, input: FanoutInput) -> None:
        await start_deliveries(input.delivery_ids, SCHEDULE)
        # The same deliveries again (a replayed record returns them again): none starts twice.
        await start_deliveries(input.delivery_ids, SCHEDULE)


async def test_start_deliveries_starts_one_child_each_that_outlives_the_parent(
        env: WorkflowEnvironment) -> None:
    suffix = uuid.uuid4().hex[:8]
    deliveries = [f"whd_a{suffix}", f"whd_b{suffix}"]
    delivered: list[str] = []

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(attempt: AttemptInput) -> AttemptOutcome:
        delivered.append(attempt.delivery_id)
        # The first attempt fails: its retry runs after the parent has already completed.
        return DELIVERED if delivered.count(attempt.delivery_id) > 1 else RETRY

    @activity.defn(name="fail_webhook_delivery")
    async def fail_webhook_delivery(failed: FailInput) -> None:
        raise AssertionError("no delivery should fail")

    async with new_worker(env.client, FanoutParentWorkflow, WebhookDeliveryWorkflow,
                          activities=[deliver_webhook, fail_webhook_delivery]) as worker:
        await env.client.execute_workflow(
            FanoutParentWorkflow.run, FanoutInput(deliveries), id=f"pi_{suffix}",
            task_queue=worker.task_queue)
        for delivery_id in deliveries:
            handle = env.client.get_workflow_handle_for(WebhookDeliveryWorkflow.run,
                                                        delivery_id)
            result = await handle.result()
            assert result == WebhookDeliveryResult(delivered=True, attempts=2)
    assert sorted(delivered) == sorted([f"whd_a{suffix}"] * 2 + [f"whd_b{suffix}"] * 2)
