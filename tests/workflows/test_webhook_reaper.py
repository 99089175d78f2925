"""WebhookReaperWorkflow on the time-skipping server, with the database read scripted."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from activities.webhook_reaper import StrandedDeliveries, StrandedDeliveriesPage
from activities.webhooks import AttemptInput, AttemptResult, SentAttempt
from tests.workflows.conftest import new_worker
from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow
from workflows.webhook_reaper import WebhookReaperInput, WebhookReaperWorkflow

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


@activity.defn(name="send_webhook")
async def send_webhook(attempt: AttemptInput) -> SentAttempt:
    return SentAttempt(attempt.delivery_id, attempt.attempt_number, closed=AttemptResult.DELIVERED)


class StrandedRows:
    """Pending, never attempted delivery rows, read in (created_at, id) pages as the database
    does; every page asked for is kept."""

    def __init__(self, count: int) -> None:
        # Two rows per second of creation time: the cursor must break ties on the id.
        self.rows = sorted(
            (LONG_AGO + timedelta(seconds=n // 2), f"whd_{n:02d}_{uuid.uuid4()}")
            for n in range(count)
        )
        self.pages: list[StrandedDeliveriesPage] = []

    def activity(self) -> Callable[..., Any]:
        @activity.defn(name="find_stranded_deliveries")
        async def find_stranded_deliveries(page: StrandedDeliveriesPage) -> StrandedDeliveries:
            self.pages.append(page)
            after = (page.after_created_at, page.after_id or "")
            rows = [
                r
                for r in self.rows
                if r[0] < page.created_before and (page.after_created_at is None or r > after)
            ][: page.limit]
            if len(rows) < page.limit:
                return StrandedDeliveries([r[1] for r in rows])
            return StrandedDeliveries([r[1] for r in rows], rows[-1][0], rows[-1][1])

        return find_stranded_deliveries


async def test_the_reaper_starts_every_stranded_delivery_once_across_pages_and_runs(
    env: WorkflowEnvironment,
) -> None:
    stranded = StrandedRows(12)
    async with new_worker(
        env.client,
        WebhookReaperWorkflow,
        WebhookDeliveryWorkflow,
        activities=[stranded.activity(), send_webhook],
    ) as worker:
        already = [stranded.rows[1][1], stranded.rows[7][1]]  # their planner did start them
        for delivery_id in already:
            await env.client.execute_workflow(
                WebhookDeliveryWorkflow.run,
                WebhookDeliveryInput(delivery_id),
                id=delivery_id,
                task_queue=worker.task_queue,
            )
        reaper = f"reaper-{uuid.uuid4().hex[:8]}"
        result = await env.client.execute_workflow(
            WebhookReaperWorkflow.run,
            WebhookReaperInput(grace_seconds=300, page_size=3, deliveries_per_run=5),
            id=reaper,
            task_queue=worker.task_queue,
        )
        runs = await _runs(env, reaper)
        delivered = [
            await env.client.get_workflow_handle(delivery_id).result()
            for _, delivery_id in stranded.rows
        ]
    assert result.started == 10  # the two already started were left alone
    assert all(r["delivered"] for r in delivered)
    # Five pages of three (the last one empty) over three runs (each continues as new once it
    # looked at five rows), all up to the same cut-off: the first run's time minus the grace.
    assert runs == 3
    assert len(stranded.pages) == 5
    assert len({page.created_before for page in stranded.pages}) == 1
    assert [page.after_id for page in stranded.pages] == [
        None,
        *(stranded.rows[n][1] for n in (2, 5, 8, 11)),
    ]


async def _runs(env: WorkflowEnvironment, workflow_id: str) -> int:
    """How many runs the workflow's continue-as-new chain has, its latest run included."""
    count, run_id = 1, None
    while True:
        history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        if not started.continued_execution_run_id:
            return count
        count, run_id = count + 1, started.continued_execution_run_id
