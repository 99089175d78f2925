"""api/routers/webhook_endpoints.py: a merchant's endpoints, their secrets and deliveries."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from tests.api.conftest import PUBLIC_URL, Merchant, count, workflow_exists

pytestmark = pytest.mark.api

ENDPOINT_FIELDS = {
    "id",
    "object",
    "url",
    "description",
    "enabledEvents",
    "status",
    "disabledReason",
    "createdAt",
    "updatedAt",
}


async def _create(merchant: Merchant, **overrides: Any) -> dict[str, Any]:
    response = await merchant.post(
        "/webhook-endpoints",
        {"url": PUBLIC_URL, "enabledEvents": ["payment.succeeded", "payment.failed"], **overrides},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_shows_the_secret_only_once(merchant: Merchant, db: asyncpg.Pool) -> None:
    created = await _create(merchant, description="orders")
    assert set(created) == ENDPOINT_FIELDS | {"secret"}
    assert created["id"].startswith("we_") and created["object"] == "webhook_endpoint"
    assert created["secret"].startswith("whsec_")
    assert created == {
        **created,
        "url": PUBLIC_URL,
        "description": "orders",
        "status": "enabled",
        "enabledEvents": ["payment.succeeded", "payment.failed"],
        "disabledReason": None,
    }
    fetched = (await merchant.get(f"/webhook-endpoints/{created['id']}")).json()
    listed = (await merchant.get("/webhook-endpoints")).json()["data"]
    assert set(fetched) == ENDPOINT_FIELDS
    assert listed == [fetched]
    row = await db.fetchrow(
        "SELECT secret_ciphertext FROM webhook_endpoint WHERE id = $1", created["id"]
    )
    assert created["secret"].encode() not in bytes(row["secret_ciphertext"])


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"url": "http://1.1.1.1/hooks", "enabledEvents": ["*"]}, "url_invalid", "url"),
        ({"url": "https://127.0.0.1/hooks", "enabledEvents": ["*"]}, "url_not_allowed", "url"),
        ({"url": "https://10.0.0.8/hooks", "enabledEvents": ["*"]}, "url_not_allowed", "url"),
        (
            {"url": "https://169.254.169.254/latest", "enabledEvents": ["*"]},
            "url_not_allowed",
            "url",
        ),
        (
            {"url": PUBLIC_URL, "enabledEvents": ["payment.exploded"]},
            "parameter_invalid",
            "enabledEvents",
        ),
        ({"url": PUBLIC_URL, "enabledEvents": []}, "parameter_invalid", "enabledEvents"),
        ({"enabledEvents": ["*"]}, "parameter_missing", "url"),
    ],
)
async def test_create_refuses_unsafe_urls_and_unknown_events(
    merchant: Merchant, db: asyncpg.Pool, body: dict[str, Any], code: str, param: str
) -> None:
    response = await merchant.post("/webhook-endpoints", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert await count(db, "webhook_endpoint", merchant) == 0


async def test_list_is_newest_first_with_cursor_pagination(merchant: Merchant) -> None:
    ids = [(await _create(merchant))["id"] for _ in range(3)][::-1]
    page = (await merchant.get("/webhook-endpoints?limit=2")).json()
    assert [e["id"] for e in page["data"]] == ids[:2] and page["hasMore"] is True
    rest = (await merchant.get(f"/webhook-endpoints?limit=2&startingAfter={ids[1]}")).json()
    assert [e["id"] for e in rest["data"]] == ids[2:] and rest["hasMore"] is False


async def test_another_merchants_endpoint_is_404(
    merchant: Merchant, other_merchant: Merchant
) -> None:
    theirs = await _create(other_merchant)
    path = f"/webhook-endpoints/{theirs['id']}"
    for method, url, body in [
        ("GET", path, None),
        ("POST", path, {"status": "disabled"}),
        ("DELETE", path, None),
        ("POST", f"{path}/rotate-secret", None),
        ("GET", f"{path}/deliveries", None),
    ]:
        response = await merchant.request(method, url, body)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["type"] == "not_found"
    assert (await merchant.get("/webhook-endpoints")).json()["data"] == []
    still = (await other_merchant.get(path)).json()
    assert still["status"] == "enabled"


async def test_disable_and_enable(merchant: Merchant) -> None:
    endpoint = await _create(merchant)
    path = f"/webhook-endpoints/{endpoint['id']}"
    disabled = (await merchant.post(path, {"status": "disabled"})).json()
    assert (disabled["status"], disabled["disabledReason"]) == ("disabled", "merchant")
    enabled = (await merchant.post(path, {"status": "enabled", "enabledEvents": ["*"]})).json()
    assert (enabled["status"], enabled["disabledReason"]) == ("enabled", None)
    assert enabled["enabledEvents"] == ["*"]
    refused = await merchant.post(path, {"url": "https://127.0.0.1/x"})
    assert refused.status_code == 400
    assert (await merchant.get(path)).json()["url"] == PUBLIC_URL


async def test_delete_hides_the_endpoint(merchant: Merchant) -> None:
    endpoint = await _create(merchant)
    path = f"/webhook-endpoints/{endpoint['id']}"
    deleted = await merchant.request("DELETE", path)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}
    assert (await merchant.get(path)).status_code == 404
    assert (await merchant.get("/webhook-endpoints")).json()["data"] == []


async def test_rotate_secret_issues_a_new_one(merchant: Merchant, db: asyncpg.Pool) -> None:
    endpoint = await _create(merchant)
    rotated = await merchant.post(
        f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 60}
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != endpoint["secret"]
    row = await db.fetchrow(
        "SELECT previous_secret_expires_at FROM webhook_endpoint WHERE id = $1", endpoint["id"]
    )
    assert row["previous_secret_expires_at"] is not None
    too_long = await merchant.post(
        f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 8 * 24 * 3600}
    )
    assert too_long.status_code == 400


async def test_deliveries_list_each_delivery_of_the_endpoint(
    merchant: Merchant, temporal: Client
) -> None:
    endpoint = await _create(merchant, enabledEvents=["*"])
    path = f"/webhook-endpoints/{endpoint['id']}/deliveries"
    assert (await merchant.get(path)).json() == {"object": "list", "data": [], "hasMore": False}
    intent = await merchant.create_intent()  # its `payment.created` is owed to the endpoint
    [delivery] = (await merchant.get(path)).json()["data"]
    event = (await merchant.get(f"/payment-intents/{intent['id']}/events")).json()["data"][0]
    assert delivery == {
        **delivery,
        "eventId": event["id"],
        "eventType": "payment.created",
        "endpointId": endpoint["id"],
        "origin": "event",
        "status": "pending",
        "attempts": [],
    }
    assert await workflow_exists(temporal, delivery["id"])  # started once the intent committed
