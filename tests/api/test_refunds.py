"""api/routers/refunds.py: refunds up to the Update they send (no worker runs here)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from tests.api.conftest import (
    Merchant,
    idempotency_record,
    insert_intent,
    rows_of,
    workflow_exists,
)

pytestmark = pytest.mark.api


@pytest.mark.parametrize("status", ["canceled", "refunded"])
async def test_a_refund_of_a_payment_that_is_over_is_409_without_temporal(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client, status: str
) -> None:
    """Canceled or fully refunded: nothing can happen any more, so no workflow run is opened
    (states only a workflow reaches, so the intent is written to the database)."""
    intent_id = await insert_intent(
        db,
        merchant,
        status=status,
        amount_received=2499,
        amount_refunded=2499 if status == "refunded" else 0,
    )
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/refunds", {"amountInCents": 100}, idempotency_key="refund-1"
    )
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("conflict", "payment_intent_unexpected_state")
    assert status in error["message"]
    assert await rows_of(db, merchant) == before  # not stored: a 409 releases its key
    assert not await workflow_exists(temporal, intent_id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"amountInCents": 0}, "amountInCents"),
        ({"amountInCents": 100_000_000}, "amountInCents"),
        ({"amountInCents": "100"}, "amountInCents"),
        ({"reason": "duplicate"}, "reason"),
    ],
)
async def test_refund_validation_errors_are_400_and_claim_nothing(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client, body: dict[str, Any], param: str
) -> None:
    intent_id = await insert_intent(db, merchant, status="succeeded", amount_received=2499)
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/refunds", body, idempotency_key="refund-2"
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert await rows_of(db, merchant) == before
    assert not await workflow_exists(temporal, intent_id)


async def test_a_refund_of_another_merchants_intent_is_404_and_claims_nothing(
    merchant: Merchant, other_merchant: Merchant, db: asyncpg.Pool, temporal: Client
) -> None:
    theirs = await insert_intent(db, other_merchant, status="succeeded", amount_received=2499)
    response = await merchant.post(f"/payment-intents/{theirs}/refunds", idempotency_key="refund-3")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    assert await idempotency_record(db, merchant, "refund-3") is None
    assert not await workflow_exists(temporal, theirs)


async def test_a_refund_that_reaches_no_worker_is_503_and_its_key_is_free_again(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client
) -> None:
    """A succeeded payment's refund opens its workflow run (update-with-start); with no worker
    the Update is never accepted: 503, not stored, so a retry with the key sends it again."""
    intent_id = await insert_intent(db, merchant, status="succeeded", amount_received=2499)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/refunds", idempotency_key="refund-4"
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert await workflow_exists(temporal, intent_id)
    assert await idempotency_record(db, merchant, "refund-4") is None
