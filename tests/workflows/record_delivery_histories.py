"""Record WebhookDeliveryWorkflow histories for tests/workflows/test_webhook_delivery_replay.py.

    .venv/bin/python -m tests.workflows.record_delivery_histories <prefix>

Runs each scenario on the time-skipping server with scripted activities and writes
`histories/delivery/<prefix>_<scenario>.json`. Record a new set before a change to the
delivery workflow's commands, so the replay test proves deliveries begun on today's code
still replay on tomorrow's (a delivery runs for up to 3 days).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from activities.webhooks import (
    AttemptInput,
    AttemptOutcome,
    AttemptResult,
    FailInput,
    SentAttempt,
)
from cli.shutdown import exit_without_finalizing
from core.webhooks import WebhookSchedule
from tests.workflows.conftest import TEST_SERVER, new_worker
from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories" / "delivery"
RETRY = AttemptOutcome(AttemptResult.RETRY)
# A short horizon keeps the history small: attempts at 0, 5, 30 s, the last at 60 s.
SHORT = WebhookSchedule(horizon_seconds=60)
# (schedule, scripted outcomes: the last one repeats; None: the record fails every time)
SCENARIOS: dict[str, tuple[WebhookSchedule, list[AttemptOutcome | None]]] = {
    "retried_then_delivered": (
        WebhookSchedule(),
        [
            RETRY,
            AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=60),
            AttemptOutcome(AttemptResult.DELIVERED),
        ],
    ),
    "failed_at_the_horizon": (SHORT, [RETRY]),
    # An attempt whose record never lands: the delivery goes on with its backoff.
    "unrecorded_then_delivered": (
        WebhookSchedule(),
        [None, AttemptOutcome(AttemptResult.DELIVERED)],
    ),
}


def scripted_activities(outcomes: list[AttemptOutcome | None]) -> list[Callable[..., Any]]:
    by_attempt: dict[int, AttemptOutcome | None] = {}

    def outcome_of(number: int) -> AttemptOutcome:
        if number not in by_attempt:  # a retried record keeps its attempt's outcome
            by_attempt[number] = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        outcome = by_attempt[number]
        if outcome is None:
            raise RuntimeError("database unavailable")
        return outcome

    @activity.defn(name="send_webhook")
    async def send_webhook(attempt: AttemptInput) -> SentAttempt:
        return SentAttempt(
            attempt.delivery_id,
            attempt.attempt_number,
            endpoint_id="we_1",
            attempted_at=activity.info().current_attempt_scheduled_time,
            status_code=500,
        )

    @activity.defn(name="record_webhook_attempt")
    async def record_webhook_attempt(sent: SentAttempt) -> AttemptOutcome:
        return outcome_of(sent.attempt_number)

    @activity.defn(name="fail_webhook_delivery")
    async def fail_webhook_delivery(failed: FailInput) -> None:
        return None

    return [send_webhook, record_webhook_attempt, fail_webhook_delivery]


async def record(prefix: str) -> None:
    HISTORIES.mkdir(parents=True, exist_ok=True)
    for name, (schedule, outcomes) in SCENARIOS.items():
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(TEST_SERVER)
        ) as env:
            async with new_worker(
                env.client, WebhookDeliveryWorkflow, activities=scripted_activities(list(outcomes))
            ) as worker:
                handle = await env.client.start_workflow(
                    WebhookDeliveryWorkflow.run,
                    WebhookDeliveryInput("whd_recorded", schedule),
                    id=f"whd_{uuid.uuid4().hex}",
                    task_queue=worker.task_queue,
                )
                await handle.result()
            history = await handle.fetch_history()
            path = HISTORIES / f"{prefix}_{name}.json"
            path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
            print(f"recorded {path.name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "baseline"))
    # A process that used a Temporal client can abort while the interpreter finalizes.
    exit_without_finalizing(0)
