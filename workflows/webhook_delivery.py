"""WebhookDeliveryWorkflow: one durable process per (event, endpoint) delivery."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        AttemptInput,
        AttemptOutcome,
        AttemptResult,
        FailInput,
        WebhookActivities,
    )
    from core.webhooks import WebhookSchedule

# Every retry here is bounded: the delivery's own backoff is the only thing that sends again
# for long. HTTP failures never raise (they come back as an answer); a send raises only when
# it could not start (the database is down) or its worker died mid-request, so three tries
# within ~3 s, then the attempt counts as failed and the backoff below takes over.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
# A record rides through a short Postgres restart (~3.5 min: 1, 2, 4, 8, 16, then 30 s) and
# never sends anything; past that the attempt counts as failed and is sent again on schedule.
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=12,
)
# The delivery's final mark comes once, after 3 days: worth an hour of retries (one a minute)
# before the run fails, visibly, in the Web UI.
CLOSE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=60,
)
# 10 s for the merchant's answer plus DNS and a short DB read.
ATTEMPT_TIMEOUT = timedelta(seconds=60)
RECORD_TIMEOUT = timedelta(seconds=30)


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
    connection error, redirect, or one we could not send or record) waits on a durable timer,
    5 s, 25 s, 125 s … capped at an hour and no sooner than a Retry-After, so a worker restart
    loses nothing. After the horizon (3 days) the delivery is failed, which disables an
    endpoint that failed everything since.
    """

    @workflow.run
    async def run(self, input: WebhookDeliveryInput) -> WebhookDeliveryResult:
        started = workflow.now()
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(AttemptInput(input.delivery_id, attempt))
            if outcome.result is not AttemptResult.RETRY:
                return WebhookDeliveryResult(outcome.result is AttemptResult.DELIVERED, attempt)
            elapsed = (workflow.now() - started).total_seconds()
            delay = input.schedule.next_delay(
                attempt, elapsed_seconds=elapsed, retry_after_seconds=outcome.retry_after_seconds
            )
            if delay is None:
                return await self._give_up(input, attempt, elapsed)
            await workflow.sleep(timedelta(seconds=delay))

    async def _attempt(self, attempt: AttemptInput) -> AttemptOutcome:
        """Send one attempt, then record it. One that could not be sent or recorded is a failed
        attempt: the backoff sends next, never a loop of activity retries."""
        try:
            sent = await workflow.execute_activity_method(
                WebhookActivities.send_webhook,
                attempt,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                retry_policy=SEND_RETRY,
            )
            if sent.closed is not None:
                return AttemptOutcome(sent.closed)
            return await workflow.execute_activity_method(
                WebhookActivities.record_webhook_attempt,
                sent,
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
            )
        except ActivityError as error:
            workflow.logger.warning(
                "webhook delivery %s: attempt %d not sent or not recorded "
                "(%s); the next one follows the backoff",
                attempt.delivery_id,
                attempt.attempt_number,
                type(error.cause).__name__,
            )
            return AttemptOutcome(AttemptResult.RETRY)

    async def _give_up(
        self, input: WebhookDeliveryInput, attempts: int, elapsed: float
    ) -> WebhookDeliveryResult:
        # A Retry-After beyond the horizon ends the delivery, but only at the horizon, so that
        # "failing for 3 days" still means 3 days when the endpoint is judged.
        remaining = input.schedule.horizon_seconds - elapsed
        if remaining > 0:
            await workflow.sleep(timedelta(seconds=remaining))
        await workflow.execute_activity_method(
            WebhookActivities.fail_webhook_delivery,
            FailInput(input.delivery_id),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=CLOSE_RETRY,
        )
        return WebhookDeliveryResult(False, attempts)
