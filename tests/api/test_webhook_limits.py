"""The caps on a merchant's webhooks: DURAPAY_MAX_WEBHOOK_ENDPOINTS endpoints (deleted ones
not counted) and DURAPAY_MAX_REDELIVERIES manual redeliveries of one event to one endpoint.
Past either, a 400 that creates nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from api import webhook_workflow
from core.settings import Settings
from tests.api.app_instances import app_instance, through
from tests.api.conftest import PUBLIC_URL, Merchant, count

pytestmark = pytest.mark.api

ENDPOINT = {"url": PUBLIC_URL, "enabledEvents": ["payment.created"]}


def _assert_refused(response: Any, code: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, None)


async def _redeliveries(db: asyncpg.Pool, event_id: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT endpoint_id, count(*) AS n FROM webhook_delivery WHERE "
        "event_id = $1 AND origin = 'redeliver' GROUP BY endpoint_id",
        event_id,
    )
    return {row["endpoint_id"]: row["n"] for row in rows}


def test_the_defaults_are_16_endpoints_and_10_redeliveries() -> None:
    fields = Settings.model_fields
    assert (fields["max_webhook_endpoints"].default, fields["max_redeliveries"].default) == (16, 10)


async def test_endpoints_past_the_limit_are_refused(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with app_instance(settings, max_webhook_endpoints=2) as limited:
        shop = through(limited, merchant)
        first = (await shop.post("/webhook-endpoints", ENDPOINT)).json()
        assert (await shop.post("/webhook-endpoints", ENDPOINT)).status_code == 201
        _assert_refused(
            await shop.post("/webhook-endpoints", ENDPOINT), "webhook_endpoint_limit_reached"
        )
        assert await count(db, "webhook_endpoint", merchant) == 2
        # A deleted endpoint no longer counts; a disabled one still does.
        assert (
            await shop.request("DELETE", f"/webhook-endpoints/{first['id']}")
        ).status_code == 200
        third = (await shop.post("/webhook-endpoints", ENDPOINT)).json()
        await shop.post(f"/webhook-endpoints/{third['id']}", {"status": "disabled"})
        _assert_refused(
            await shop.post("/webhook-endpoints", ENDPOINT), "webhook_endpoint_limit_reached"
        )


async def test_concurrent_creations_cannot_pass_the_limit_together(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with app_instance(settings, max_webhook_endpoints=3) as limited:
        shop = through(limited, merchant)
        answers = await asyncio.gather(
            *(shop.post("/webhook-endpoints", ENDPOINT) for _ in range(8))
        )
    assert sorted(a.status_code for a in answers) == [201] * 3 + [400] * 5
    assert await count(db, "webhook_endpoint", merchant) == 3


async def test_redeliveries_past_the_limit_are_refused_per_event_and_endpoint(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with app_instance(settings, max_redeliveries=2) as limited:
        shop = through(limited, merchant)
        first = (await shop.post("/webhook-endpoints", ENDPOINT)).json()["id"]
        intent = await shop.create_intent()
        trail = (await shop.get(f"/payment-intents/{intent['id']}/events")).json()
        event_id = trail["data"][0]["id"]
        redeliver = f"/events/{event_id}/redeliver"
        accepted = {}
        for key in ("r1", "r2"):
            accepted[key] = await shop.post(redeliver, idempotency_key=key)
            assert accepted[key].status_code == 202
        _assert_refused(
            await shop.post(redeliver, idempotency_key="r3"), "redelivery_limit_reached"
        )
        _assert_refused(
            await shop.post(redeliver, {"endpointId": first}), "redelivery_limit_reached"
        )
        # A retry of an accepted request is still answered (it creates nothing).
        again = await shop.post(redeliver, idempotency_key="r2")
        assert again.status_code == 202 and again.json() == accepted["r2"].json()
        assert await _redeliveries(db, event_id) == {first: 2}
        # Another endpoint has its own count; to every subscribed endpoint, the first one's
        # share refuses the whole request: nothing goes to either.
        second = (await shop.post("/webhook-endpoints", ENDPOINT)).json()["id"]
        _assert_refused(await shop.post(redeliver), "redelivery_limit_reached")
        for _ in range(2):
            response = await shop.post(redeliver, {"endpointId": second})
            assert response.status_code == 202, response.text
        _assert_refused(
            await shop.post(redeliver, {"endpointId": second}), "redelivery_limit_reached"
        )
        assert await _redeliveries(db, event_id) == {first: 2, second: 2}


async def test_concurrent_redeliveries_cannot_pass_the_limit_together(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = 6
    arrived = asyncio.Barrier(requests)
    check = webhook_workflow._check_redelivery_count

    async def check_together(*args: Any, **kwargs: Any) -> None:
        await arrived.wait()  # every request counts at once: the race, made certain
        await check(*args, **kwargs)

    async with app_instance(settings, max_redeliveries=2) as limited:
        shop = through(limited, merchant)
        endpoint = (await shop.post("/webhook-endpoints", ENDPOINT)).json()["id"]
        intent = await shop.create_intent()
        trail = (await shop.get(f"/payment-intents/{intent['id']}/events")).json()
        event_id = trail["data"][0]["id"]
        monkeypatch.setattr(webhook_workflow, "_check_redelivery_count", check_together)
        answers = await asyncio.gather(
            *(shop.post(f"/events/{event_id}/redeliver") for _ in range(requests))
        )
    assert sorted(a.status_code for a in answers) == [202] * 2 + [400] * (requests - 2)
    assert await _redeliveries(db, event_id) == {endpoint: 2}
