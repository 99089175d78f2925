"""WebhookDeliveryWorkflow: one durable process per (event, endpoint) delivery."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        AttemptInput,
        AttemptResult,
        FailInput,
        WebhookActivities,
    )
    from core.webhooks import WebhookSchedule

# Database writes must eventually land (Postgres restarts); HTTP failures never raise, they
# come back as an outcome and are retried by the durable backoff below, not by this policy.
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                           maximum_interval=timedelta(seconds=30))
# 10 s for the merchant's answer plus DNS and two short DB transactions.
ATTEMPT_TIMEOUT = timedelta(seconds=60)


@dataclass
class WebhookDeliveryInput:
    delivery_id: str
    schedule: WebhookSchedule = field(default_factory=WebhookSchedule)


@dataclass
class WebhookDeliveryResult:
    delivered: bool
    attempts: int


@workflow.defn
class WebhookDeliveryWorkflow:
    """Deliver one event to one endpoint until a 2xx: each failed attempt (non-2xx, timeout,
    connection error, redirect) waits on a durable timer, 5 s, 25 s, 125 s … capped at an hour
    and no sooner than a Retry-After, so a worker restart loses nothing. After the horizon
    (3 days) the delivery is failed, which disables an endpoint that failed everything since.
    """

    @workflow.run
    async def run(self, input: WebhookDeliveryInput) -> WebhookDeliveryResult:
        started = workflow.now()
        attempt = 0
        while True:
            attempt += 1
            outcome = await workflow.execute_activity_method(
                WebhookActivities.deliver_webhook, AttemptInput(input.delivery_id, attempt),
                start_to_close_timeout=ATTEMPT_TIMEOUT, retry_policy=RECORD_RETRY)
            if outcome.result is not AttemptResult.RETRY:
                return WebhookDeliveryResult(outcome.result is AttemptResult.DELIVERED, attempt)
            elapsed = (workflow.now() - started).total_seconds()
            delay = input.schedule.next_delay(attempt, elapsed_seconds=elapsed,
                                              retry_after_seconds=outcome.retry_after_seconds)
            if delay is None:
                return await self._give_up(input, attempt, elapsed)
            await workflow.sleep(timedelta(seconds=delay))

    async def _give_up(self, input: WebhookDeliveryInput, attempts: int,
                       elapsed: float) -> WebhookDeliveryResult:
        # A Retry-After beyond the horizon ends the delivery, but only at the horizon, so that
        # "failing for 3 days" still means 3 days when the endpoint is judged.
        remaining = input.schedule.horizon_seconds - elapsed
        if remaining > 0:
            await workflow.sleep(timedelta(seconds=remaining))
        await workflow.execute_activity_method(
            WebhookActivities.fail_webhook_delivery, FailInput(input.delivery_id),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=RECORD_RETRY)
        return WebhookDeliveryResult(False, attempts)
