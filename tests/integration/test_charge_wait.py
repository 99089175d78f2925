"""A charge whose first answer takes longer than DURAPAY_CHARGE_WAIT_SECONDS: docs/api.md says the
request answers 202 with the Transaction while the workflow goes on, never a 5xx.

The same happens on the default stack whenever a worker dies mid-charge (the chaos run sees
it); here a 1 s charge wait and a held card make it deterministic. Own stack, since the charge
wait is an API setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from client import DurapayClient
from core.domain import transaction_id_for
from tests.integration.conftest import card, create_intent
from tests.integration.helpers import (
    FAST_TIMING_ENV,
    assert_eventually,
    charge,
    ledger_entries,
    own_stack,
    settled_intent,
    signed_merchant,
)
from tests.stack import RunningStack

HELD_APPROVE_PAN = "4000000000001018"  # held 3 s: the adapter gives up at 1.5 s


@pytest.fixture(scope="module")
def short_wait_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(
        tmp_path_factory, "wait", extra_env={**FAST_TIMING_ENV, "DURAPAY_CHARGE_WAIT_SECONDS": "1"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def short_wait_client(short_wait_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(short_wait_stack, "Patient Merchant") as client:
        yield client


async def test_charge_slower_than_the_charge_wait_is_202_and_settles(
    short_wait_stack: RunningStack, short_wait_client: DurapayClient
) -> None:
    durapay = short_wait_client
    intent = await create_intent(durapay)
    response = await charge(
        durapay, intent["id"], card(HELD_APPROVE_PAN), idempotency_key="slow-charge-1"
    )
    assert response.status_code == 202, response.text
    txn = response.json()
    assert txn["paymentIntentId"] == intent["id"]
    assert txn["status"] in ("pending", "timeout")  # the network has not answered yet
    # The transaction this request created, named before the workflow recorded it.
    assert txn["id"] == transaction_id_for(intent["id"], "charge:slow-charge-1")

    # The merchant retrying the same request gets the same answer, not a conflict.
    again = await charge(
        durapay, intent["id"], card(HELD_APPROVE_PAN), idempotency_key="slow-charge-1"
    )
    assert again.status_code == 202, again.text
    assert again.json()["id"] == txn["id"]

    final = await settled_intent(durapay, intent["id"])
    assert final["status"] == "succeeded"
    assert [t["status"] for t in final["transactions"]] == ["succeeded"]
    async with httpx.AsyncClient(base_url=short_wait_stack.cardnet_url, timeout=10) as cardnet:
        ledger = await ledger_entries(cardnet, txn["networkReference"])
    assert [(e["type"], e["status"]) for e in ledger] == [("charge", "approved")]


async def test_a_slow_charge_after_a_decline_is_answered_with_itself_not_the_decline(
    short_wait_client: DurapayClient,
) -> None:
    durapay = short_wait_client
    intent = await create_intent(durapay)
    declined = await charge(
        durapay, intent["id"], card("4000000000000002"), idempotency_key="first-try"
    )
    assert declined.status_code in (402, 202), declined.text
    assert (await settled_intent(durapay, intent["id"]))["status"] == "failed"

    response = await charge(
        durapay, intent["id"], card(HELD_APPROVE_PAN), idempotency_key="second-try"
    )
    assert response.status_code == 202, response.text  # never the first attempt's 402
    txn = response.json()
    assert txn["id"] == transaction_id_for(intent["id"], "charge:second-try")
    final = await settled_intent(durapay, intent["id"])
    assert final["status"] == "succeeded"
    assert [t["status"] for t in final["transactions"] if t["id"] == txn["id"]] == ["succeeded"]


async def test_a_queued_refund_is_answered_with_itself_not_the_refund_ahead_of_it(
    short_wait_stack: RunningStack, short_wait_client: DurapayClient
) -> None:
    durapay = short_wait_client
    intent = await create_intent(durapay)
    await charge(durapay, intent["id"], card("4242424242424242"))
    assert (await settled_intent(durapay, intent["id"]))["status"] == "succeeded"
    async with httpx.AsyncClient(base_url=short_wait_stack.cardnet_url, timeout=10) as cardnet:
        await cardnet.post("/faults", json={"holdRate": 1.0})  # the first refund is held
        try:
            first = asyncio.create_task(
                durapay.post(
                    f"/payment-intents/{intent['id']}/refunds",
                    {"amountInCents": 500},
                    idempotency_key="refund-ahead",
                )
            )
            await assert_eventually(lambda: _has_refund(durapay, intent["id"]))
            queued = await durapay.post(
                f"/payment-intents/{intent['id']}/refunds",
                {"amountInCents": 600},
                idempotency_key="refund-queued",
            )
        finally:
            await cardnet.delete("/faults")
    assert queued.status_code == 202, queued.text
    assert queued.json()["id"] == transaction_id_for(intent["id"], "refund:refund-queued")
    ahead = (await first).json()
    assert queued.json()["id"] != ahead["id"]
    await settled_intent(durapay, intent["id"])


async def _has_refund(durapay: DurapayClient, intent_id: str) -> bool:
    transactions = (await durapay.get(f"/payment-intents/{intent_id}")).json()["transactions"]
    return any(t["type"] == "refund" for t in transactions)
