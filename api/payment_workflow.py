"""How the API starts an intent's workflow: one place for its id, input, policies and the
search attributes operators filter on, shared by intent creation and update-with-start."""

from __future__ import annotations

from typing import Any

from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from core import search_attributes
from core.db.tables import PaymentIntent
from core.domain import CaptureMethod
from core.settings import Settings
from workflows.payment_intent import PaymentIntentInput, ReconcilePolicy


def payment_workflow_input(intent: PaymentIntent, settings: Settings) -> PaymentIntentInput:
    return PaymentIntentInput(
        payment_intent_id=intent.id, merchant_id=intent.merchant_id,
        amount_in_cents=intent.amount_in_cents, currency=intent.currency,
        capture_method=CaptureMethod(intent.capture_method),
        reconcile=ReconcilePolicy(
            first_delay_seconds=settings.reconcile_first_delay_seconds,
            max_delay_seconds=settings.reconcile_max_delay_seconds,
            horizon_seconds=settings.reconcile_horizon_seconds))


def payment_workflow_options(intent: PaymentIntent, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `start_workflow` / `WithStartWorkflowOperation`."""
    return {
        "id": intent.id,
        "task_queue": settings.task_queue,
        # A closed payment's id is never reused: a second run would not know the first one's
        # money. A start racing an update-with-start attaches to the running one.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": TypedSearchAttributes([
            SearchAttributePair(search_attributes.MERCHANT_ID, intent.merchant_id),
            SearchAttributePair(search_attributes.STATUS, intent.status),
            SearchAttributePair(search_attributes.AMOUNT, intent.amount_in_cents),
            SearchAttributePair(search_attributes.CURRENCY, intent.currency),
            SearchAttributePair(search_attributes.MANUAL_REVIEW, False),
        ]),
    }
