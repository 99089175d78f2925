"""api/authentication.py's cached signing keys: each API process keeps the decrypted secrets of
the keys it has seen, and a key rolled, expired or deleted is refused by the very next request
in every process (docs/security.md, "Signing keys"), changing nothing."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from core.settings import Settings
from tests.api.app_instances import app_instance, through
from tests.api.conftest import ADMIN, Merchant, onboard, statements_of

pytestmark = pytest.mark.api


async def _nonces(db: asyncpg.Pool, merchant: Merchant) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM request_nonce WHERE public_key = $1", merchant.public_key
        )
    )


async def _refused_at_once(merchant: Merchant, db: asyncpg.Pool) -> None:
    before = await _nonces(db, merchant)
    refused = await merchant.get("/payment-intents")
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert await _nonces(db, merchant) == before  # nothing spent


async def test_a_key_rolled_in_one_process_is_refused_at_once_by_another(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    old = await onboard(http)
    async with app_instance(settings) as elsewhere:
        old_elsewhere = through(elsewhere, old)
        # Both processes have verified (and so cached) the old key.
        assert (await old.get("/payment-intents")).status_code == 200
        assert (await old_elsewhere.get("/payment-intents")).status_code == 200
        rolled = await http.post(f"/merchants/{old.id}/keys/roll", headers=ADMIN)
        assert rolled.status_code == 200, rolled.text
        await _refused_at_once(old_elsewhere, db)
        await _refused_at_once(old, db)
        keys = rolled.json()
        new = Merchant(elsewhere, old.id, keys["publicKey"], keys["secretKey"])
        assert (await new.get("/payment-intents")).status_code == 200


async def test_a_key_whose_grace_period_ran_out_is_refused_at_once(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    old = await onboard(http)
    rolled = await http.post(
        f"/merchants/{old.id}/keys/roll", json={"gracePeriodSeconds": 3600}, headers=ADMIN
    )
    assert rolled.status_code == 200, rolled.text
    assert (await old.get("/payment-intents")).status_code == 200  # cached, still in grace
    # The grace period runs out (as if an hour had passed).
    await db.execute(
        "UPDATE merchant_key SET expires_at = now() - interval '1 second' WHERE public_key = $1",
        old.public_key,
    )
    await _refused_at_once(old, db)


async def test_a_deleted_key_is_refused_at_once(http: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    merchant = await onboard(http)
    assert (await merchant.get("/payment-intents")).status_code == 200  # cached
    await db.execute("DELETE FROM merchant_key WHERE public_key = $1", merchant.public_key)
    await _refused_at_once(merchant, db)


async def test_a_key_is_read_and_decrypted_once_per_process(
    http: httpx.AsyncClient, app: FastAPI
) -> None:
    merchant = await onboard(http)
    for expected_reads in (1, 0):
        with statements_of(app) as sent:
            assert (await merchant.get("/payment-intents")).status_code == 200
        assert sum("FROM merchant_key WHERE" in query for query in sent) == expected_reads
