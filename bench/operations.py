"""The Durapay operations `make bench` times: signed requests through the SDK's raw client
(client/raw.py), and the same authorization sent straight to the simulator as a baseline."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from bench.measurement import expect
from client import DurapayClient
from client.retry import refused_unprocessed, retry_after_seconds
from tests.stack import RunningStack

CARD = {"number": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"}
INTENT = {"amountInCents": 1000, "currency": "usd"}


@dataclass
class DurapayOperations:
    durapay: DurapayClient
    network: httpx.AsyncClient
    created: list[str] = field(default_factory=list)  # every intent created, for retrieves
    uncharged: list[str] = field(default_factory=list)  # created by `create`, for `charge`
    charged: list[str] = field(default_factory=list)  # charged by `create_and_charge`

    # Requests the API refused before doing anything (429, or 503 with Durapay-Not-Processed)
    # and this client sent again after Retry-After, as a careful client does: an operation
    # counts once it is done, and its CPU and statements are those of done work.
    refused: int = 0

    def __post_init__(self) -> None:
        self._retrieve_order: Iterator[int] = itertools.count()

    async def _send(self, method: str, path: str, body: object = None) -> httpx.Response:
        key = str(uuid.uuid4()) if method == "POST" else None
        while True:
            response = await self.durapay.request(method, path, body, idempotency_key=key)
            if not refused_unprocessed(response):
                return response
            self.refused += 1
            await asyncio.sleep(retry_after_seconds(response.headers.get("retry-after")) or 1.0)

    async def authorize_at_network(self) -> None:
        response = await self.network.post(
            "/v1/operations",
            json={
                "reference": f"bench-{uuid.uuid4().hex}",
                "type": "charge",
                "amountInCents": 1000,
                "currency": "usd",
                "card": CARD,
            },
        )
        expect(response, 200)

    async def _create(self) -> str:
        response = await self._send("POST", "/payment-intents", INTENT)
        expect(response, 201)
        intent_id = str(response.json()["id"])
        self.created.append(intent_id)
        return intent_id

    async def _charge(self, intent_id: str) -> None:
        response = await self._send(
            "POST", f"/payment-intents/{intent_id}/transactions", {"type": "charge", "card": CARD}
        )
        expect(response, 200)

    async def create(self) -> None:
        self.uncharged.append(await self._create())

    async def retrieve(self) -> None:
        intent_id = self.created[next(self._retrieve_order) % len(self.created)]
        expect(await self._send("GET", f"/payment-intents/{intent_id}"), 200)

    async def charge(self) -> None:
        await self._charge(self.uncharged.pop())

    async def create_and_charge(self) -> None:
        intent_id = await self._create()
        await self._charge(intent_id)
        self.charged.append(intent_id)


@asynccontextmanager
async def durapay_operations(
    stack: RunningStack, concurrency: int
) -> AsyncIterator[DurapayOperations]:
    merchant = await create_merchant(stack, "Bench")
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with (
        httpx.AsyncClient(base_url=stack.cardnet_url, timeout=60, limits=limits) as net,
        DurapayClient(
            stack.api_url, merchant["publicKey"], merchant["secretKey"], timeout=60
        ) as durapay,
    ):
        yield DurapayOperations(durapay, net)


async def create_merchant(stack: RunningStack, name: str) -> dict[str, str]:
    """A new merchant on `stack` (its id and keys), onboarded with the operator token."""
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {stack.admin_token}"}
    ) as admin:
        response = await admin.post("/merchants", json={"name": name})
        expect(response, 201)
        return dict(response.json())
