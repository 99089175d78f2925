"""Admission control on a real API process (api/in_flight.py): flooded with create+charge
stories far past its concurrency limit, it refuses the excess at once with 503, Retry-After
and `Durapay-Not-Processed`, while every request it admitted completes; a refused request left
nothing behind, and sent again after its Retry-After it is served."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api.concurrency_limit import MAX_RETRY_AFTER_SECONDS
from client import Durapay, DurapayClient
from tests.integration.conftest import CARD_4242
from tests.integration.helpers import assert_eventually
from tests.integration.test_api_limits import api_process
from tests.stack import RunningStack

pytestmark = pytest.mark.integration

STORIES = 48
# A small ceiling, so that a flood of STORIES at once overflows it however fast this machine
# is; the floor lets the limit adapt below it.
LIMITS = {"DURAPAY_API_MIN_IN_FLIGHT": "2", "DURAPAY_API_MAX_IN_FLIGHT": "4"}


@pytest.fixture(scope="module")
def limited_api(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = Path(tmp_path_factory.mktemp("admission")) / "api.log"
    with api_process(stack, log, **LIMITS) as url:
        yield url


async def timed(send: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await send
    return response, time.monotonic() - started


async def test_a_flood_is_refused_at_once_and_what_was_admitted_completes(
    limited_api: str, merchant: dict[str, Any], db: asyncpg.Pool
) -> None:
    run = uuid.uuid4().hex[:8]
    refusals: list[tuple[httpx.Response, float]] = []
    created: dict[str, str] = {}  # idempotency key -> intent id
    refused_keys: list[str] = []
    charged: dict[str, int] = {}  # intent id -> charge status

    async with DurapayClient(limited_api, merchant["publicKey"], merchant["secretKey"]) as durapay:

        async def story(index: int) -> None:
            key = f"{run}-create-{index}"
            response, seconds = await timed(
                durapay.post(
                    "/payment-intents",
                    {"amountInCents": 1000 + index, "currency": "usd"},
                    idempotency_key=key,
                )
            )
            if response.status_code == 503:
                refusals.append((response, seconds))
                refused_keys.append(key)
                return
            assert response.status_code == 201, response.text
            intent_id = response.json()["id"]
            created[key] = intent_id
            response, seconds = await timed(
                durapay.post(
                    f"/payment-intents/{intent_id}/transactions",
                    {"type": "charge", "card": CARD_4242},
                    idempotency_key=f"{run}-charge-{index}",
                )
            )
            if response.status_code == 503:
                refusals.append((response, seconds))
                return
            charged[intent_id] = response.status_code

        await asyncio.gather(*(story(i) for i in range(STORIES)))

        assert refusals, "the flood was never refused"
        for response, _ in refusals:
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("api_error", "service_unavailable")
            assert 1 <= int(response.headers["retry-after"]) <= MAX_RETRY_AFTER_SECONDS
            assert response.headers["durapay-not-processed"] == "true"
        slowest_refusal = max(seconds for _, seconds in refusals)
        assert slowest_refusal < 2.0, f"a refusal took {slowest_refusal:.2f} s"
        assert created and charged, "nothing was admitted"
        assert set(charged.values()) <= {200, 202}, charged

        # Nothing refused changed anything: no intent, no idempotency record for its key.
        intents = await db.fetchval(
            "SELECT count(*) FROM payment_intent WHERE merchant_id = $1", merchant["id"]
        )
        assert intents == len(created)
        assert (
            await db.fetchval(
                "SELECT count(*) FROM idempotency_record WHERE merchant_id = $1 AND key = ANY($2)",
                merchant["id"],
                refused_keys,
            )
            == 0
        )

        # Everything admitted completes: each charge answered 200 (or 202, then settles).
        for intent_id in charged:

            async def succeeded(intent_id: str = intent_id) -> bool:
                intent = (await durapay.get(f"/payment-intents/{intent_id}")).json()
                return bool(intent["status"] == "succeeded")

            await assert_eventually(succeeded, timeout=60)

    # A refused create, sent again by the SDK (after its Retry-After, with the same key), is
    # served once.
    async with Durapay(
        limited_api, merchant["publicKey"], merchant["secretKey"], max_retries=10
    ) as sdk:
        intent = await sdk.payment_intents.create(
            amount_in_cents=1000, currency="usd", idempotency_key=refused_keys[0]
        )
    assert intent.amount_in_cents == 1000
    assert (
        await db.fetchval(
            "SELECT count(*) FROM payment_intent WHERE merchant_id = $1", merchant["id"]
        )
        == len(created) + 1
    )
