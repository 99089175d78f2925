"""api/admin_throttle.py: failed admin-token attempts are limited per client address and in
all, so the admin token cannot be guessed online."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import ADMIN

pytestmark = pytest.mark.api

WRONG = {"Authorization": "Bearer not-the-admin-token"}


@asynccontextmanager
async def admin_clients(
    settings: Settings, per_minute: float, addresses: list[str]
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One app (one process's throttle), reached from each of `addresses`."""
    app = create_app(settings.model_copy(update={"admin_rate_limit_per_minute": per_minute}))
    async with app.router.lifespan_context(app):
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                base_url="http://durapay.test",
            )
            for address in addresses
        ]
        try:
            yield clients
        finally:
            for client in clients:
                await client.aclose()


async def _onboard(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post(
        "/merchants", json={"name": f"Shop {uuid.uuid4().hex[:6]}"}, headers=headers
    )


def _assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Cache-Control"] == "no-store"


async def test_failed_admin_attempts_past_the_limit_are_429_even_with_the_right_token(
    settings: Settings,
) -> None:
    async with admin_clients(settings, 3, ["203.0.113.1", "203.0.113.2"]) as (guesser, other):
        for _ in range(3):
            assert (await _onboard(guesser, WRONG)).status_code == 401
        _assert_throttled(await _onboard(guesser, WRONG))
        # The right token gets the same answer: a guess that hits is not told apart.
        _assert_throttled(await _onboard(guesser, ADMIN))
        _assert_throttled(await guesser.post("/merchants/mer_x/keys/roll", headers=ADMIN))
        # Another address is not held back by this one's failures.
        assert (await _onboard(other, ADMIN)).status_code == 201


async def test_successful_admin_requests_spend_nothing(settings: Settings) -> None:
    async with admin_clients(settings, 1, ["203.0.113.3"]) as (operator,):
        for _ in range(3):
            assert (await _onboard(operator, ADMIN)).status_code == 201
        assert (await _onboard(operator, WRONG)).status_code == 401
        _assert_throttled(await _onboard(operator, ADMIN))


async def test_failures_from_many_addresses_are_limited_in_all(settings: Settings) -> None:
    # One failure a minute per address, ten in all: the eleventh address is refused at once.
    addresses = [f"198.51.100.{n}" for n in range(1, 12)]
    async with admin_clients(settings, 1, addresses) as clients:
        for client in clients[:10]:
            assert (await _onboard(client, WRONG)).status_code == 401
        _assert_throttled(await _onboard(clients[10], ADMIN))


async def test_merchant_requests_are_not_throttled_by_admin_failures(settings: Settings) -> None:
    async with admin_clients(settings, 1, ["203.0.113.4"]) as (client,):
        assert (await _onboard(client, WRONG)).status_code == 401
        _assert_throttled(await _onboard(client, WRONG))
        unsigned = await client.get("/payment-intents")
        assert unsigned.status_code == 401, unsigned.text
        assert (await client.get("/livez")).status_code == 200
