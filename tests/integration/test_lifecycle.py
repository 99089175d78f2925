"""Manual capture, cancel/void and refunds end to end, each wrong order, concurrent refunds;
after every test the network's ledger agrees with our transactions for the intent."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from client import DurapayClient
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge, ledger_entries

LEDGER_TYPE = {"capture": "capture", "void": "void", "refund": "refund"}


async def _intent(durapay: DurapayClient, intent_id: str) -> dict[str, Any]:
    response = await durapay.get(f"/payment-intents/{intent_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def assert_ledger_agrees(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, intent_id: str, *, capture_method: str
) -> None:
    """Every transaction of ours has the ledger entry it should: type, amount, status."""
    for txn in (await _intent(durapay, intent_id))["transactions"]:
        entries = await ledger_entries(cardnet, txn["networkReference"])
        if txn["status"] == "failed" and not entries:
            continue  # never committed at the network
        assert len(entries) == 1, (txn, entries)
        entry = entries[0]
        expected_type = LEDGER_TYPE.get(txn["type"]) or (
            "authorize" if capture_method == "manual" else "charge"
        )
        assert entry["type"] == expected_type, (txn, entry)
        assert entry["amountInCents"] == txn["amountInCents"], (txn, entry)
        assert entry["status"] == ("approved" if txn["status"] == "succeeded" else "declined")


async def _authorized(durapay: DurapayClient, amount: int = 2499) -> dict[str, Any]:
    intent = await create_intent(durapay, amount, captureMethod="manual")
    response = await charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    after = await _intent(durapay, intent["id"])
    assert (after["status"], after["amountCapturable"]) == ("requires_capture", amount)
    return after


async def _captured(durapay: DurapayClient, amount: int = 2499) -> dict[str, Any]:
    intent = await create_intent(durapay, amount)
    response = await charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    return await _intent(durapay, intent["id"])


async def test_manual_capture_in_full(durapay: DurapayClient, cardnet: httpx.AsyncClient) -> None:
    intent = await _authorized(durapay)
    response = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["amountReceived"], body["amountCapturable"]) == (
        "succeeded",
        2499,
        0,
    )
    assert [t["type"] for t in body["transactions"]] == ["charge", "capture"]
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_partial_capture_releases_the_rest(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    response = await durapay.post(
        f"/payment-intents/{intent['id']}/capture", {"amountInCents": 1000}, idempotency_key="cap-1"
    )
    assert response.status_code == 200, response.text
    assert (response.json()["amountReceived"], response.json()["amountCapturable"]) == (1000, 0)
    again = await durapay.post(
        f"/payment-intents/{intent['id']}/capture", {"amountInCents": 1000}, idempotency_key="cap-1"
    )
    assert again.json() == response.json()  # the stored answer, nothing sent twice
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_capture_more_than_authorized_is_rejected(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    response = await durapay.post(
        f"/payment-intents/{intent['id']}/capture", {"amountInCents": 2500}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "amountInCents"
    assert (await _intent(durapay, intent["id"]))["status"] == "requires_capture"
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_capture_twice_is_a_conflict(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    first = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert first.status_code == 200, first.text
    second = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert second.status_code == 409, second.text
    assert second.json()["error"]["type"] == "conflict"
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_capture_of_an_automatic_payment_is_a_conflict(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _captured(durapay)
    response = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert response.status_code == 409, response.text
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


async def test_cancel_voids_the_authorization(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    response = await durapay.post(f"/payment-intents/{intent['id']}/cancel", {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["cancellationReason"], body["amountCapturable"]) == (
        "canceled",
        "requested_by_customer",
        0,
    )
    assert [t["type"] for t in body["transactions"]] == ["charge", "void"]
    events = (await durapay.get(f"/payment-intents/{intent['id']}/events")).json()["data"]
    assert events[-1]["type"] == "payment.canceled"
    capture = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert capture.status_code == 409, capture.text
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_cancel_without_a_charge_calls_no_network(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay)
    response = await durapay.post(
        f"/payment-intents/{intent['id']}/cancel", {"cancellationReason": "abandoned"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancellationReason"]) == (
        "canceled",
        "abandoned",
    )
    assert response.json()["transactions"] == []
    later = await charge(durapay, intent["id"], CARD_4242)
    assert later.status_code == 409, later.text


async def test_cancel_after_capture_is_a_conflict(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _captured(durapay)
    response = await durapay.post(f"/payment-intents/{intent['id']}/cancel", {})
    assert response.status_code == 409, response.text
    assert (await _intent(durapay, intent["id"]))["status"] == "succeeded"
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


async def test_partial_then_full_refunds(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _captured(durapay)
    first = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 500})
    assert first.status_code == 200, first.text
    assert (first.json()["type"], first.json()["amountInCents"]) == ("refund", 500)
    second = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 700})
    assert second.status_code == 200, second.text
    partial = await _intent(durapay, intent["id"])
    assert (partial["status"], partial["amountRefunded"]) == ("partially_refunded", 1200)
    rest = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {})
    assert rest.status_code == 200, rest.text
    assert rest.json()["amountInCents"] == 1299
    final = await _intent(durapay, intent["id"])
    assert (final["status"], final["amountRefunded"]) == ("refunded", 2499)
    events = (await durapay.get(f"/payment-intents/{intent['id']}/events")).json()["data"]
    assert [e["type"] for e in events][-3:] == [
        "payment.partially_refunded",
        "payment.partially_refunded",
        "payment.refunded",
    ]
    # Merchants order a payment's (unordered) webhook deliveries by `sequence`.
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), sequences
    more = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 1})
    assert more.status_code == 409, more.text
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


async def test_refund_of_a_partial_capture(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    await durapay.post(f"/payment-intents/{intent['id']}/capture", {"amountInCents": 1000})
    too_much = await durapay.post(
        f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 1001}
    )
    assert too_much.status_code == 400, too_much.text
    assert too_much.json()["error"]["param"] == "amountInCents"
    refund = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {})
    assert (refund.status_code, refund.json()["amountInCents"]) == (200, 1000)
    assert (await _intent(durapay, intent["id"]))["status"] == "refunded"
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_refund_before_capture_is_a_conflict(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _authorized(durapay)
    response = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {})
    assert response.status_code == 409, response.text
    fresh = await create_intent(durapay)
    unpaid = await durapay.post(f"/payment-intents/{fresh['id']}/refunds", {})
    assert unpaid.status_code == 409, unpaid.text
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="manual")


async def test_refund_more_than_captured_is_rejected(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _captured(durapay)
    response = await durapay.post(
        f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 2500}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "amountInCents"
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


@pytest.mark.parametrize("amounts", [[1000, 1000, 1000], [2499, 2499]])
async def test_concurrent_refunds_never_exceed_the_amount(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, amounts: list[int]
) -> None:
    intent = await _captured(durapay)
    responses = await asyncio.gather(
        *(
            durapay.post(f"/payment-intents/{intent['id']}/refunds", {"amountInCents": amount})
            for amount in amounts
        )
    )
    codes = sorted(r.status_code for r in responses)
    allowed = 2 if amounts[0] == 1000 else 1
    # A refund that no longer fits: 400 while something is left, 409 once `refunded`.
    loser = 400 if amounts[0] == 1000 else 409
    assert codes == [200] * allowed + [loser] * (len(amounts) - allowed), [
        r.text for r in responses
    ]
    refunded = allowed * amounts[0]
    final = await _intent(durapay, intent["id"])
    assert final["amountRefunded"] == refunded
    at_network = [
        e
        for t in final["transactions"]
        if t["type"] == "refund"
        for e in await ledger_entries(cardnet, t["networkReference"])
    ]
    assert sum(e["amountInCents"] for e in at_network if e["status"] == "approved") == refunded
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


async def test_refund_webhook_events_for_each_partial_refund(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await _captured(durapay)
    for amount in (100, 200):
        response = await durapay.post(
            f"/payment-intents/{intent['id']}/refunds", {"amountInCents": amount}
        )
        assert response.status_code == 200, response.text

    async def two_refund_events() -> bool:
        events = (await durapay.get("/events?type=payment.partially_refunded")).json()["data"]
        return len([e for e in events if e["data"]["paymentId"] == intent["id"]]) == 2

    await assert_eventually(two_refund_events)
    await assert_ledger_agrees(durapay, cardnet, intent["id"], capture_method="automatic")


@pytest.mark.parametrize("ending", ["canceled", "refunded"])
async def test_every_operation_on_a_closed_payment_is_a_conflict(
    durapay: DurapayClient, temporal: Client, ending: str
) -> None:
    """Once its workflow has ended, a payment answers 409 to everything, every time (not 500:
    update-with-start finds a closed workflow whose id is never reused)."""
    if ending == "canceled":
        intent = await create_intent(durapay)
        closing = await durapay.post(f"/payment-intents/{intent['id']}/cancel", {})
    else:
        intent = await _captured(durapay)
        closing = await durapay.post(f"/payment-intents/{intent['id']}/refunds", {})
    assert closing.status_code == 200, closing.text
    handle = temporal.get_workflow_handle(intent["id"])

    async def closed() -> bool:
        return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    await assert_eventually(closed)
    for _ in range(3):
        for path, body in (("capture", {}), ("cancel", {}), ("refunds", {"amountInCents": 1})):
            response = await durapay.post(f"/payment-intents/{intent['id']}/{path}", body)
            assert response.status_code == 409, (path, response.text)
            assert response.json()["error"]["code"] == "payment_intent_unexpected_state"
