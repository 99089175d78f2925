"""Record WebhookDeliveryWorkflow histories for tests/workflows/test_webhook_delivery_replay.py.

    .venv/bin/python -m tests.workflows.record_delivery_histories baseline

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

from activities.webhooks import AttemptInput, AttemptOutcome, AttemptResult, FailInput
from core.webhooks import WebhookSchedule
from tests.workflows.conftest import TEST_SERVER, new_worker
from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories" / "delivery"
RETRY = AttemptOutcome(AttemptResult.RETRY)
# A short horizon keeps the history small: attempts at 0, 5, 30 s, the last at 60 s.
SHORT = WebhookSchedule(horizon_seconds=60)
# (schedule, scripted outcomes: the last one repeats)
SCENARIOS: dict[str, tuple[WebhookSchedule, list[AttemptOutcome]]] = {
    "retried_then_delivered": (WebhookSchedule(), [
        RETRY, AttemptOutcome(AttemptResult.RETRY, retry_after_seconds=60),
        AttemptOutcome(AttemptResult.DELIVERED)]),
    "failed_at_the_horizon": (SHORT, [RETRY]),
}


def scripted_activities(outcomes: list[AttemptOutcome]) -> list[Callable[..., Any]]:
    def next_outcome() -> AttemptOutcome:
        return outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(attempt: AttemptInput) -> AttemptOutcome:
        return next_outcome()

    @activity.defn(name="fail_webhook_delivery")
    async def fail_webhook_delivery(failed: FailInput) -> None:
        return None

    return [deliver_webhook, fail_webhook_delivery]


async def record(prefix: str) -> None:
    HISTORIES.mkdir(parents=True, exist_ok=True)
    for name, (schedule, outcomes) in SCENARIOS.items():
        async with await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(TEST_SERVER)) as env:
            async with new_worker(env.client, WebhookDeliveryWorkflow,
                                  activities=scripted_activities(list(outcomes))) as worker:
                handle = await env.client.start_workflow(
                    WebhookDeliveryWorkflow.run, WebhookDeliveryInput("whd_recorded", schedule),
                    id=f"whd_{uuid.uuid4().hex}", task_queue=worker.task_queue)
                await handle.result()
            history = await handle.fetch_history()
            path = HISTORIES / f"{prefix}_{name}.json"
            path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
            print(f"recorded {path.name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "baseline"))
