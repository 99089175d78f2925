"""Every answer carries `Cache-Control: no-store`, first of all those that hold a secret: a
merchant's secret key, a webhook signing secret, and their idempotent replays."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import ADMIN, PUBLIC_URL, Merchant

pytestmark = pytest.mark.api


def _not_stored(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Cache-Control"] == "no-store"


async def test_answers_with_merchant_keys_are_not_stored(http: httpx.AsyncClient) -> None:
    created = await http.post("/merchants", json={"name": "Acme"}, headers=ADMIN)
    _not_stored(created, 201)
    assert "secretKey" in created.json()
    rolled = await http.post(f"/merchants/{created.json()['id']}/keys/roll", headers=ADMIN)
    _not_stored(rolled, 200)
    assert "secretKey" in rolled.json()


async def test_answers_with_webhook_secrets_are_not_stored(merchant: Merchant) -> None:
    created = await merchant.post("/webhook-endpoints", {"url": PUBLIC_URL, "enabledEvents": ["*"]})
    _not_stored(created, 201)
    assert "secret" in created.json()
    rotated = await merchant.post(f"/webhook-endpoints/{created.json()['id']}/rotate-secret")
    _not_stored(rotated, 200)
    assert "secret" in rotated.json()


async def test_replays_and_errors_are_not_stored_either(
    http: httpx.AsyncClient, merchant: Merchant
) -> None:
    body = {"amountInCents": 100, "currency": "usd"}
    first = await merchant.post("/payment-intents", body, idempotency_key="no-store-1")
    replay = await merchant.post("/payment-intents", body, idempotency_key="no-store-1")
    _not_stored(first, 201)
    _not_stored(replay, 201)
    assert replay.content == first.content
    _not_stored(await merchant.get("/payment-intents"), 200)
    _not_stored(await http.get("/payment-intents"), 401)
