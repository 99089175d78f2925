"""Starting an intent's webhook deliveries, called from inside PaymentIntentWorkflow.

Not a workflow of its own: a coroutine that runs in the caller's workflow context, so every
delivery is a child of the intent's workflow and shows up in its history. The deliveries were
planned in the database transaction that appended their event (`core/db/deliveries.py`): when
the merchant has no endpoint there is nothing to start and nothing reaches history.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from core.webhooks import WebhookSchedule

from workflows.webhook_delivery import WebhookDeliveryInput, WebhookDeliveryWorkflow


async def start_deliveries(delivery_ids: list[str], schedule: WebhookSchedule) -> None:
    """One child WebhookDeliveryWorkflow per delivery, all started in one workflow task."""
    await asyncio.gather(*(_start_delivery(d, schedule) for d in delivery_ids))


async def _start_delivery(delivery_id: str, schedule: WebhookSchedule) -> None:
    try:
        await workflow.start_child_workflow(
            WebhookDeliveryWorkflow.run, WebhookDeliveryInput(delivery_id, schedule),
            id=delivery_id,
            # Deliveries outlive the payment's run: it ends once the payment is at rest, while
            # its `payment.succeeded` may still be retried for up to 3 days.
            parent_close_policy=ParentClosePolicy.ABANDON,
            # A delivery that already ran to its end is never run a second time.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        pass  # started before (a replayed record, or the API): the same delivery
