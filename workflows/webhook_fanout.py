"""Fan-out of an intent's events to webhook endpoints, called from inside PaymentIntentWorkflow.

Not a workflow of its own: a coroutine that runs in the caller's workflow context, so every
delivery is a child of the intent's workflow and shows up in its history.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import PlanInput, WebhookActivities
    from core.webhooks import WebhookSchedule

from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow

PLAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                         maximum_interval=timedelta(seconds=30))


async def dispatch_webhooks(payment_intent_id: str, after_seq: int) -> int:
    """Plan deliveries for the intent's events with seq > after_seq (one activity, idempotent:
    upsert delivery rows keyed by (event_id, endpoint_id) with a stable delivery id, and return
    ALL deliveries for those events even on a retry), start one child WebhookDeliveryWorkflow per
    delivery (workflow id = the delivery id, ParentClosePolicy.ABANDON, tolerate
    'already started'), and return the highest event seq planned (after_seq if none)."""
    plan = await workflow.execute_activity_method(
        WebhookActivities.plan_webhook_deliveries, PlanInput(payment_intent_id, after_seq),
        start_to_close_timeout=timedelta(seconds=30), retry_policy=PLAN_RETRY)
    # Started together: one workflow task for all of them instead of one round trip each.
    await asyncio.gather(*(_start_delivery(d.delivery_id, plan.schedule)
                           for d in plan.deliveries))
    return plan.last_seq


async def _start_delivery(delivery_id: str, schedule: WebhookSchedule) -> None:
    try:
        await workflow.start_child_workflow(
            WebhookDeliveryWorkflow.run, WebhookDeliveryInput(delivery_id, schedule),
            id=delivery_id,
            # Deliveries outlive the payment: a succeeded intent's workflow ends while its
            # `payment.succeeded` may still be retried for up to 3 days.
            parent_close_policy=ParentClosePolicy.ABANDON,
            # A delivery that already ran to its end is never run a second time.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass  # started by an earlier call (e.g. before a continue-as-new): the same delivery
