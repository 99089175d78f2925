"""Starting webhook deliveries as children, from inside PaymentIntentWorkflow (an intent's
deliveries) or WebhookReaperWorkflow (deliveries nobody started).

Not a workflow of its own: a coroutine that runs in the caller's workflow context, so every
delivery is a child of the caller's workflow and shows up in its history. The deliveries were
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


async def start_deliveries(delivery_ids: list[str], schedule: WebhookSchedule) -> int:
    """One child WebhookDeliveryWorkflow per delivery, all started in one workflow task; how
    many were started here (the others had been started before)."""
    started = await asyncio.gather(*(_start_delivery(d, schedule) for d in delivery_ids))
    return sum(started)


async def _start_delivery(delivery_id: str, schedule: WebhookSchedule) -> bool:
    try:
        await workflow.start_child_workflow(
            WebhookDeliveryWorkflow.run,
            WebhookDeliveryInput(delivery_id, schedule),
            id=delivery_id,
            # Deliveries outlive the payment's run: it ends once the payment is at rest, while
            # its `payment.succeeded` may still be retried for up to 3 days.
            parent_close_policy=ParentClosePolicy.ABANDON,
            # A delivery that already ran to its end is never run a second time.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False  # started before (a replayed record, the API, the reaper): the same one
    return True
