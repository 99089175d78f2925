"""WebhookReaperWorkflow: start every webhook delivery that was planned but never started."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.webhook_reaper import (
        StrandedDeliveries,
        StrandedDeliveriesPage,
        WebhookReaperActivities,
    )
    from core.webhooks import WebhookSchedule

from workflows.webhook_fanout import start_deliveries

# A reaper that cannot read the database gives up after ~1 minute: the schedule runs the next.
READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
    maximum_attempts=6,
)


@dataclass
class WebhookReaperInput:
    # Deliveries younger than this are left to whoever planned them (a run starts its own
    # within seconds); it must exceed that, or the reaper races every fresh delivery.
    grace_seconds: float
    webhooks: WebhookSchedule = field(default_factory=WebhookSchedule)
    page_size: int = 100
    # Each start (or refused start) is a few history events; past this many deliveries looked
    # at, the run continues as new from its cursor.
    deliveries_per_run: int = 1000
    # Carried across continue-as-new: where the last run stopped, and the time it read up to.
    created_before: datetime | None = None
    after_created_at: datetime | None = None
    after_id: str | None = None
    started_before: int = 0  # by the runs this one continues


@dataclass
class WebhookReaperResult:
    started: int  # deliveries this reaper started (not those someone had started already)


@workflow.defn
class WebhookReaperWorkflow:
    """The safety net behind every webhook: a delivery row left `pending` with no attempt, older
    than the grace period, gets its WebhookDeliveryWorkflow, under its own id (one that runs or
    ran already is left alone). The schedule runs one every interval; each pages through the
    stranded rows oldest first and ends."""

    @workflow.run
    async def run(self, input: WebhookReaperInput) -> WebhookReaperResult:
        created_before = input.created_before or (
            workflow.now() - timedelta(seconds=input.grace_seconds)
        )
        page = StrandedDeliveriesPage(
            created_before, input.page_size, input.after_created_at, input.after_id
        )
        started, examined = input.started_before, 0
        while True:
            found: StrandedDeliveries = await workflow.execute_activity_method(
                WebhookReaperActivities.find_stranded_deliveries,
                page,
                start_to_close_timeout=timedelta(seconds=30),  # one indexed page
                retry_policy=READ_RETRY,
            )
            if found.delivery_ids:
                newly = await start_deliveries(found.delivery_ids, input.webhooks)
                if newly:
                    workflow.logger.warning(
                        "started %d webhook deliveries nobody had started", newly
                    )
                started += newly
                examined += len(found.delivery_ids)
            if found.next_id is None:
                return WebhookReaperResult(started)
            page = StrandedDeliveriesPage(
                created_before, input.page_size, found.next_created_at, found.next_id
            )
            if examined >= input.deliveries_per_run:
                workflow.continue_as_new(
                    dataclasses.replace(
                        input,
                        created_before=created_before,
                        after_created_at=page.after_created_at,
                        after_id=page.after_id,
                        started_before=started,
                    )
                )
