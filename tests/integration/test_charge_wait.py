"""A charge whose first answer takes longer than DURAPAY_CHARGE_WAIT_SECONDS: API.md says the
request answers 202 with the Transaction while the workflow goes on, never a 5xx.

The same happens on the default stack whenever a worker dies mid-charge (the chaos run sees
it); here a 1 s charge wait and a held card make it deterministic. Own stack, since the charge
wait is an API setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from client import DurapayClient
from tests.integration.conftest import card, create_intent
from tests.integration.helpers import (
    FAST_TIMING_ENV,
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
    with own_stack(tmp_path_factory, "wait", extra_env={
            **FAST_TIMING_ENV, "DURAPAY_CHARGE_WAIT_SECONDS": "1"}) as running:
        yield running


@pytest.fixture(scope="module")
async def short_wait_client(short_wait_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(short_wait_stack, "Patient Merchant") as client:
        yield client


async def test_charge_slower_than_the_charge_wait_is_202_and_settles(
        short_wait_stack: RunningStack, short_wait_client: DurapayClient) -> None:
    durapay = short_wait_client
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], card(HELD_APPROVE_PAN),
                            idempotency_key="slow-charge-1")
    assert response.status_code == 202, response.text
    txn = response.json()
    assert txn["paymentIntentId"] == intent["id"]
    assert txn["status"] in ("pending", "timeout")  # the network has not answered yet

    # The merchant retrying the same request gets the same answer, not a conflict.
    again = await charge(durapay, intent["id"], card(HELD_APPROVE_PAN),
                         idempotency_key="slow-charge-1")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == txn["id"]

    final = await settled_intent(durapay, intent["id"])
    assert final["status"] == "succeeded"
    assert [t["status"] for t in final["transactions"]] == ["succeeded"]
    async with httpx.AsyncClient(base_url=short_wait_stack.cardnet_url, timeout=10) as cardnet:
        ledger = await ledger_entries(cardnet, txn["networkReference"])
    assert [(e["type"], e["status"]) for e in ledger] == [("charge", "approved")]
