from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from client import DurapayClient
from tests.integration.helpers import FAST_TIMING_ENV, cardnet_client, database_pool, onboard
from tests.stack import RunningStack, private_dir, start_stack

pytestmark = pytest.mark.integration

LAUNCH_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # A short path: PostgreSQL and Temporal state live under it.
    home = private_dir("dp") / "home"
    started = time.monotonic()
    # Test timing (see FAST_TIMING_ENV): holds outlive the adapter timeout and reconciliation
    # polls within seconds, so the timeout cards settle quickly with no client action.
    running = start_stack(home, extra_env=FAST_TIMING_ENV)
    LAUNCH_SECONDS["healthy"] = time.monotonic() - started
    print(f"\n[stack] healthy after {LAUNCH_SECONDS['healthy']:.1f} s")
    yield running
    running.stop()


@pytest.fixture(scope="session")
async def admin(stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {stack.admin_token}"}
    ) as http:
        yield http


@pytest.fixture
async def merchant(admin: httpx.AsyncClient) -> dict[str, Any]:
    return await onboard(admin, f"Merchant {uuid.uuid4().hex[:6]}")


@pytest.fixture
async def durapay(stack: RunningStack, merchant: dict[str, Any]) -> AsyncIterator[DurapayClient]:
    async with DurapayClient(stack.api_url, merchant["publicKey"], merchant["secretKey"]) as client:
        yield client


@pytest.fixture(scope="session")
async def temporal(stack: RunningStack) -> Client:
    return await stack.temporal_client()


@pytest.fixture(scope="session")
async def db(stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    async with database_pool(stack) as pool:
        yield pool


@pytest.fixture(scope="session")
async def cardnet(stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    async with cardnet_client(stack) as http:
        yield http


CARD_4242: dict[str, Any] = {
    "number": "4242424242424242",
    "expMonth": 12,
    "expYear": 2030,
    "cvc": "123",
}


def card(number: str, **overrides: Any) -> dict[str, Any]:
    return {**CARD_4242, "number": number, **overrides}


async def create_intent(durapay: DurapayClient, amount: int = 2499, **extra: Any) -> dict[str, Any]:
    response = await durapay.post(
        "/payment-intents", {"amountInCents": amount, "currency": "usd", **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()
