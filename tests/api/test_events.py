"""api/routers/events.py: the merchant's events, and redelivery of one to its endpoints."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.api.conftest import PUBLIC_URL, Merchant, workflow_exists

pytestmark = pytest.mark.api


async def _created_events(merchant: Merchant, count: int) -> list[str]:
    """The `payment.created` events of `count` new intents, newest first."""
    ids = []
    for n in range(count):
        intent = await merchant.create_intent(amount=100 + n)
        trail = (await merchant.get(f"/payment-intents/{intent['id']}/events")).json()
        ids.append(trail["data"][0]["id"])
    return ids[::-1]


async def test_events_are_listed_newest_first_with_cursor_pagination(merchant: Merchant) -> None:
    newest_first = await _created_events(merchant, 3)
    page = (await merchant.get("/events?limit=2")).json()
    assert [e["id"] for e in page["data"]] == newest_first[:2]
    assert page["hasMore"] is True
    rest = (await merchant.get(f"/events?limit=2&startingAfter={newest_first[1]}")).json()
    assert [e["id"] for e in rest["data"]] == newest_first[2:]
    assert rest["hasMore"] is False
    sequences = [e["sequence"] for e in page["data"] + rest["data"]]
    assert sequences == sorted(sequences, reverse=True)


async def test_events_filter_by_type_and_show_only_the_callers(
    merchant: Merchant, other_merchant: Merchant
) -> None:
    [mine] = await _created_events(merchant, 1)
    [theirs] = await _created_events(other_merchant, 1)
    created = (await merchant.get("/events?type=payment.created")).json()["data"]
    assert [e["id"] for e in created] == [mine]
    assert (await merchant.get("/events?type=payment.succeeded")).json()["data"] == []
    cursor = await merchant.get(f"/events?startingAfter={theirs}")
    assert cursor.status_code == 400
    assert cursor.json()["error"]["param"] == "startingAfter"


async def test_redeliver_of_an_unknown_or_another_merchants_event_is_404(
    merchant: Merchant, other_merchant: Merchant
) -> None:
    [theirs] = await _created_events(other_merchant, 1)
    for event_id in (theirs, "evt_nope"):
        response = await merchant.post(f"/events/{event_id}/redeliver")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


async def test_redeliver_without_endpoints_starts_nothing(merchant: Merchant) -> None:
    [event_id] = await _created_events(merchant, 1)
    response = await merchant.post(f"/events/{event_id}/redeliver")
    assert response.status_code == 202
    assert response.json() == {"object": "list", "data": [], "hasMore": False}


async def test_redeliver_starts_one_delivery_per_key(merchant: Merchant, temporal: Client) -> None:
    endpoint = (
        await merchant.post(
            "/webhook-endpoints", {"url": PUBLIC_URL, "enabledEvents": ["payment.created"]}
        )
    ).json()
    [event_id] = await _created_events(merchant, 1)
    first = await merchant.post(f"/events/{event_id}/redeliver", idempotency_key="again-1")
    assert first.status_code == 202, first.text
    [delivery] = first.json()["data"]
    assert delivery == {
        **delivery,
        "object": "webhook_delivery",
        "eventId": event_id,
        "eventType": "payment.created",
        "endpointId": endpoint["id"],
        "origin": "redeliver",
        "status": "pending",
        "attemptCount": 0,
        "attempts": [],
    }
    assert delivery["id"].startswith("whd_")
    assert await workflow_exists(temporal, delivery["id"])
    again = await merchant.post(f"/events/{event_id}/redeliver", idempotency_key="again-1")
    assert [d["id"] for d in again.json()["data"]] == [delivery["id"]]
    other = await merchant.post(f"/events/{event_id}/redeliver", idempotency_key="again-2")
    assert [d["id"] for d in other.json()["data"]] != [delivery["id"]]
