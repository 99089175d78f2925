"""api/idempotency.py: what a key's record holds (nothing derived from the card's number or CVC)
and how long it counts (DURAPAY_IDEMPOTENCY_RETENTION_SECONDS). Records are aged by moving
their `created_at` back, never by waiting."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from api.idempotency import ABANDONED_AFTER, request_fingerprint
from api.main import create_app
from api.schemas.transactions import TransactionCreate
from core.keyring import MasterKey
from core.settings import Settings
from tests.api.conftest import CARD_4242, Merchant, count, idempotency_record, served_by
from tests.api.test_transactions import AnsweringPaymentWorkflow

pytestmark = pytest.mark.api

RETENTION_SECONDS = 90  # short, and past ABANDONED_AFTER: an expired record is deletable
INTENT = {"amountInCents": 1200, "currency": "usd"}


@asynccontextmanager
async def retaining(
    settings: Settings, merchant: Merchant, seconds: int
) -> AsyncIterator[Merchant]:
    """`merchant`'s requests to an app that keeps idempotency records `seconds`."""
    async with served_with(settings, merchant, idempotency_retention_seconds=seconds) as shop:
        yield shop


@asynccontextmanager
async def served_with(
    settings: Settings, merchant: Merchant, **changes: Any
) -> AsyncIterator[Merchant]:
    """`merchant`'s requests to an app whose settings differ by `changes`."""
    app = create_app(settings.model_copy(update=changes))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
        ) as http,
    ):
        yield dataclasses.replace(merchant, http=http)


async def _age(db: asyncpg.Pool, merchant: Merchant, key: str, seconds: float) -> None:
    await db.execute(
        "UPDATE idempotency_record SET created_at = now() - make_interval("
        "secs => $3) WHERE merchant_id = $1 AND key = $2",
        merchant.id,
        key,
        float(seconds),
    )


def _charge(**card: Any) -> dict[str, Any]:
    return {"type": "charge", "card": {**CARD_4242, **card}}


async def test_a_charge_key_holds_nothing_derived_from_the_number_or_the_cvc(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with served_by(AnsweringPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent()
        path = f"/payment-intents/{intent['id']}/transactions"
        first = await shop.post(path, _charge(cvc="123"), idempotency_key="card-key")
        assert first.status_code == 200, first.text
        record = await idempotency_record(db, merchant, "card-key")
        assert record is not None
        # The fingerprint covers the card as the answer shows it (brand, last4, expiry), which
        # the record's stored answer and the vault's row hold in clear anyway; nothing else.
        assert record["request_hash"] == request_fingerprint(
            settings.resolved_key_ring().current,
            record["endpoint"],
            {
                "type": "charge",
                "card": {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2030},
            },
        )
        assert CARD_4242["number"] not in str(dict(record))
        # So another CVC, or another number with the same brand, last4 and expiry, is the same
        # request: its answer is replayed and the record does not change.
        card: dict[str, Any]
        for card in ({"cvc": "987"}, {"cvc": "4321"}, {"number": "4000000000024242"}):
            again = await shop.post(path, _charge(**card), idempotency_key="card-key")
            assert (again.status_code, again.content) == (200, first.content), card
            assert await idempotency_record(db, merchant, "card-key") == record
        # Another card as the answer would show it is still another request.
        for card in ({"number": "5555555555554444"}, {"expYear": 2031}, {"expMonth": 11}):
            other = await shop.post(path, _charge(**card), idempotency_key="card-key")
            assert other.status_code == 400, card
            assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_fingerprint_is_the_same_whatever_the_cvc() -> None:
    def fingerprint(**card: Any) -> str:
        body = TransactionCreate.model_validate(_charge(**card))
        return request_fingerprint(
            MasterKey(b"k" * 32),
            "POST /payment-intents/pi_1/transactions",
            body.idempotency_parameters(),
        )

    assert fingerprint(cvc="123") == fingerprint(cvc="999") == fingerprint(cvc="0000")
    assert fingerprint() != fingerprint(number="5555555555554444")


async def test_a_key_past_its_retention_is_a_new_key(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with retaining(settings, merchant, RETENTION_SECONDS) as shop:
        first = await shop.post("/payment-intents", INTENT, idempotency_key="order-1")
        assert first.status_code == 201, first.text
        await _age(db, merchant, "order-1", RETENTION_SECONDS - 5)
        kept = await shop.post("/payment-intents", INTENT, idempotency_key="order-1")
        assert kept.content == first.content  # still within retention: replayed
        await _age(db, merchant, "order-1", RETENTION_SECONDS + 1)
        again = await shop.post("/payment-intents", INTENT, idempotency_key="order-1")
        assert again.status_code == 201, again.text
        assert again.json()["id"] != first.json()["id"]  # the request ran again
        assert (
            await shop.post("/payment-intents", INTENT, idempotency_key="order-1")
        ).content == again.content
        await _age(db, merchant, "order-1", RETENTION_SECONDS + 1)
        other = await shop.post(
            "/payment-intents", {**INTENT, "amountInCents": 1300}, idempotency_key="order-1"
        )
        assert other.status_code == 201, other.text  # other parameters are no reuse either
    assert await count(db, "payment_intent", merchant) == 3
    assert await count(db, "idempotency_record", merchant) == 1


async def test_a_key_first_used_before_a_master_key_rotation_still_replays(
    settings: Settings, merchant: Merchant
) -> None:
    # Fingerprints are keyed by the master key: after a rotation the old key, retired, still
    # recognises the first request, so the merchant's retry gets its answer, not a 400.
    rotated = {
        "master_key": base64.b64encode(os.urandom(32)).decode(),
        "retired_master_keys": settings.master_key,
    }
    async with served_with(settings, merchant) as shop:
        first = await shop.post("/payment-intents", INTENT, idempotency_key="order-rotated")
        assert first.status_code == 201, first.text
    async with served_with(settings, merchant, **rotated) as shop:
        again = await shop.post("/payment-intents", INTENT, idempotency_key="order-rotated")
        assert (again.status_code, again.content) == (201, first.content)
        other = await shop.post(
            "/payment-intents", {**INTENT, "amountInCents": 1300}, idempotency_key="order-rotated"
        )
        assert other.status_code == 400, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = await shop.post("/payment-intents", INTENT, idempotency_key="order-after")
        assert fresh.status_code == 201, fresh.text
        assert (
            await shop.post("/payment-intents", INTENT, idempotency_key="order-after")
        ).content == fresh.content


async def test_a_claim_in_flight_outlives_a_short_retention_until_it_is_abandoned(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    async with retaining(settings, merchant, 1) as shop:
        await shop.post("/payment-intents", INTENT, idempotency_key="in-flight")
        # As if its request were still running.
        await db.execute(
            "UPDATE idempotency_record SET response_status = NULL, "
            "response_body = NULL WHERE merchant_id = $1",
            merchant.id,
        )
        await _age(db, merchant, "in-flight", 5)
        in_use = await shop.post("/payment-intents", INTENT, idempotency_key="in-flight")
        assert in_use.status_code == 409, in_use.text
        assert in_use.json()["error"]["code"] == "idempotency_key_in_use"
        await _age(db, merchant, "in-flight", ABANDONED_AFTER.total_seconds() + 1)
        taken = await shop.post(
            "/payment-intents", {**INTENT, "amountInCents": 1300}, idempotency_key="in-flight"
        )
        assert taken.status_code == 201, taken.text


async def test_a_claim_leaves_expired_records_of_others_to_housekeeping(
    settings: Settings, merchant: Merchant, other_merchant: Merchant, db: asyncpg.Pool
) -> None:
    """Deleting them is the `durapay-housekeeping` schedule's (tests/api/test_housekeeping.py):
    a claim writes only its own record."""
    async with retaining(settings, merchant, RETENTION_SECONDS) as shop:
        theirs = dataclasses.replace(other_merchant, http=shop.http)
        assert (
            await theirs.post("/payment-intents", INTENT, idempotency_key="expired")
        ).status_code == 201
        await _age(db, other_merchant, "expired", RETENTION_SECONDS + 3600)
        assert (
            await shop.post("/payment-intents", INTENT, idempotency_key=uuid.uuid4().hex)
        ).status_code == 201
    assert await idempotency_record(db, other_merchant, "expired") is not None
