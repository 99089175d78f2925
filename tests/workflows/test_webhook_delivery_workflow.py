"""WebhookDeliveryWorkflow and starting deliveries on the time-skipping server, activities
mocked."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment

# This module defines a workflow, so the sandbox re-imports it: pass the I/O modules through.
with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        AttemptInput,
        AttemptOutcome,
        AttemptResult,
        FailInput,
        SentAttempt,
    )
    from core.webhooks import WebhookSchedule
    from tests.workflows.conftest import new_worker, time_skipping
    from workflows.webhook_delivery import (
        RECORD_RETRY,
        SEND_RETRY,
        WebhookDeliveryInput,
        WebhookDeliveryResult,
        WebhookDeliveryWorkflow,
    )
    from workflows.webhook_fanout import start_deliveries

SCHEDULE = WebhookSchedule()  # production timings: 5 s, 25 s, 125 s … 1 h, for 3 days


@dataclass
class FakeReceiver:
    """Scripted attempt outcomes; records when (in workflow time) each attempt was sent.

    `send_failures` / `record_failures` name attempt numbers whose send (before any request) or
    record raises every time it runs, as when the database is down."""

    outcomes: list[AttemptOutcome]
    send_failures: set[int] = field(default_factory=set)
    record_failures: set[int] = field(default_factory=set)
    attempts: list[tuple[int, datetime]] = field(default_factory=list)
    send_calls: Counter[int] = field(default_factory=Counter)
    record_calls: Counter[int] = field(default_factory=Counter)
    failed: list[tuple[str, datetime]] = field(default_factory=list)

    def _send(self, attempt: AttemptInput) -> SentAttempt:
        self.send_calls[attempt.attempt_number] += 1
        if attempt.attempt_number in self.send_failures:
            raise RuntimeError("database unavailable")  # before any request went out
        scheduled = activity.info().current_attempt_scheduled_time
        self.attempts.append((attempt.attempt_number, scheduled))
        return SentAttempt(
            attempt.delivery_id,
            attempt.attempt_number,
            endpoint_id="we_test",
            attempted_at=scheduled,
            status_code=500,
        )

    def _record(self, sent: SentAttempt) -> AttemptOutcome:
        self.record_calls[sent.attempt_number] += 1
        if sent.attempt_number in self.record_failures:
            raise RuntimeError("database unavailable")
        if len(self.outcomes) > 1:
            return self.outcomes.pop(0)
        return self.outcomes[0]  # the last outcome repeats forever

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="send_webhook")
        async def send_webhook(attempt: AttemptInput) -> SentAttempt:
            return self._send(attempt)

        @activity.defn(name="record_webhook_attempt")
        async def record_webhook_attempt(sent: SentAttempt) -> AttemptOutcome:
            return self._record(sent)

        @activity.defn(name="fail_webhook_delivery")
        async def fail_webhook_delivery(failed: FailInput) -> None:
            self.failed.append((failed.delivery_id, activity.info().current_attempt_scheduled_time))

        return [send_webhook, record_webhook_attempt, fail_webhook_delivery]

    def gaps(self) -> list[float]:
        times = [t for _, t in self.attempts]
        return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


RETRY = AttemptOutcome(AttemptResult.RETRY)
DELIVERED = AttemptOutcome(AttemptResult.DELIVERED)


async def _deliver(
    env: WorkflowEnvironment, receiver: FakeReceiver, *, within: timedelta | None = None
) -> WebhookDeliveryResult:
    async with new_worker(
        env.client, WebhookDeliveryWorkflow, activities=receiver.activities()
    ) as worker:
        return await env.client.execute_workflow(
            WebhookDeliveryWorkflow.run,
            WebhookDeliveryInput("whd_test", SCHEDULE),
            id=f"whd_{uuid.uuid4().hex}",
            task_queue=worker.task_queue,
            execution_timeout=within,
        )


def _close(actual: list[float], expected: list[float]) -> bool:
    return len(actual) == len(expected) and all(
        e <= a < e + 2 for a, e in zip(actual, expected, strict=True)
    )


async def test_failures_are_retried_with_exponential_backoff(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([RETRY, RETRY, RETRY, DELIVERED])
    result = await _deliver(env, receiver)
    assert result == WebhookDeliveryResult(delivered=True, attempts=4)
    assert [n for n, _ in receiver.attempts] == [1, 2, 3, 4]
    assert _close(receiver.gaps(), [5, 25, 125]), receiver.gaps()
    assert receiver.failed == []


async def test_retry_after_is_honoured(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver(
        [
            AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=600),
            AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=1),
            DELIVERED,
        ]
    )
    result = await _deliver(env, receiver)
    assert result.delivered
    # Not before the 600 s asked, and a short Retry-After never shortens the backoff (25 s).
    assert _close(receiver.gaps(), [600, 25]), receiver.gaps()


# The record's retries, all spent: 1, 2, 4, 8, 16, then 30 s between its tries.
RECORD_RETRIES_SECONDS = sum(min(2**n, 30) for n in range(RECORD_RETRY.maximum_attempts - 1))


async def test_an_attempt_that_cannot_be_recorded_is_never_sent_again_by_retries(
    env: WorkflowEnvironment,
) -> None:
    """A record failing after the send (the database down, or once an answer
    it could not store) retries the record alone, a bounded number of times; the delivery
    then sends again on its backoff, not every ≤30 s for ever."""
    receiver = FakeReceiver([DELIVERED], record_failures={1, 2})
    # Bounded, so the loop this guards against fails the test rather than hanging it.
    result = await _deliver(env, receiver, within=timedelta(hours=1))
    assert result == WebhookDeliveryResult(delivered=True, attempts=3)
    assert receiver.send_calls == Counter({1: 1, 2: 1, 3: 1}), receiver.send_calls
    assert receiver.record_calls == Counter(
        {1: RECORD_RETRY.maximum_attempts, 2: RECORD_RETRY.maximum_attempts, 3: 1}
    )
    assert _close(receiver.gaps(), [RECORD_RETRIES_SECONDS + 5, RECORD_RETRIES_SECONDS + 25]), (
        receiver.gaps()
    )
    assert receiver.failed == []


async def test_an_attempt_that_cannot_be_sent_counts_as_failed(env: WorkflowEnvironment) -> None:
    receiver = FakeReceiver([DELIVERED], send_failures={1})
    result = await _deliver(env, receiver, within=timedelta(hours=1))
    assert result == WebhookDeliveryResult(delivered=True, attempts=2)
    assert receiver.send_calls == Counter({1: SEND_RETRY.maximum_attempts, 2: 1})
    assert receiver.record_calls == Counter({2: 1})


async def test_records_that_never_succeed_still_end_at_the_horizon(
    env: WorkflowEnvironment,
) -> None:
    """Every attempt's record fails: one send per attempt, and the delivery still fails at the
    horizon (then `fail_webhook_delivery` marks it), instead of retrying one attempt forever."""
    receiver = FakeReceiver([RETRY], record_failures=set(range(1, 1000)))
    result = await _deliver(env, receiver, within=timedelta(days=4))
    assert not result.delivered
    assert set(receiver.send_calls.values()) == {1}
    assert sorted(receiver.send_calls) == list(range(1, result.attempts + 1))
    first, last = receiver.attempts[0][1], receiver.attempts[-1][1]
    assert (last - first).total_seconds() <= SCHEDULE.horizon_seconds
    assert [d for d, _ in receiver.failed] == ["whd_test"]


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
    env: WorkflowEnvironment,
) -> None:
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
    env: WorkflowEnvironment,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    deliveries = [f"whd_a{suffix}", f"whd_b{suffix}"]
    delivered: list[str] = []

    @activity.defn(name="send_webhook")
    async def send_webhook(attempt: AttemptInput) -> SentAttempt:
        delivered.append(attempt.delivery_id)
        return SentAttempt(
            attempt.delivery_id,
            attempt.attempt_number,
            endpoint_id="we_test",
            attempted_at=activity.info().current_attempt_scheduled_time,
        )

    @activity.defn(name="record_webhook_attempt")
    async def record_webhook_attempt(sent: SentAttempt) -> AttemptOutcome:
        # The first attempt fails: its retry runs after the parent has already completed.
        return DELIVERED if delivered.count(sent.delivery_id) > 1 else RETRY

    @activity.defn(name="fail_webhook_delivery")
    async def fail_webhook_delivery(failed: FailInput) -> None:
        raise AssertionError("no delivery should fail")

    async with new_worker(
        env.client,
        FanoutParentWorkflow,
        WebhookDeliveryWorkflow,
        activities=[send_webhook, record_webhook_attempt, fail_webhook_delivery],
    ) as worker:
        await env.client.execute_workflow(
            FanoutParentWorkflow.run,
            FanoutInput(deliveries),
            id=f"pi_{suffix}",
            task_queue=worker.task_queue,
        )
        for delivery_id in deliveries:
            # The typed handle get_workflow_handle_for() gives, which mypy cannot infer there.
            handle = env.client.get_workflow_handle(delivery_id, result_type=WebhookDeliveryResult)
            async with time_skipping(env):  # the second attempt's backoff
                result = await handle.result()
            assert result == WebhookDeliveryResult(delivered=True, attempts=2)
    assert sorted(delivered) == sorted([f"whd_a{suffix}"] * 2 + [f"whd_b{suffix}"] * 2)
