"""api/routers/merchants.py: onboarding and key rolls (operator, admin token)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from tests.api.conftest import ADMIN, Merchant, onboard

pytestmark = pytest.mark.api


async def _merchants(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM merchant"))


async def test_onboarding_returns_the_keys_once(http: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    response = await http.post("/merchants", json={"name": "Acme"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    merchant = response.json()
    assert set(merchant) == {"id", "object", "name", "publicKey", "secretKey"}
    assert merchant["id"].startswith("mer_") and merchant["object"] == "merchant"
    assert merchant["name"] == "Acme"
    assert merchant["publicKey"].startswith("pk_test_")
    assert merchant["secretKey"].startswith("sk_test_")
    stored = await db.fetchrow(
        "SELECT * FROM merchant_key WHERE public_key = $1", merchant["publicKey"]
    )
    assert stored is not None
    assert merchant["secretKey"].encode() not in bytes(stored["secret_ciphertext"])


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Bearer "])
async def test_onboarding_without_the_admin_token_is_401(
    http: httpx.AsyncClient, db: asyncpg.Pool, authorization: str | None
) -> None:
    before = await _merchants(db)
    headers = {"Authorization": authorization} if authorization else {}
    response = await http.post("/merchants", json={"name": "Intruder"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert await _merchants(db) == before


async def test_a_merchants_key_is_not_an_admin_token(
    http: httpx.AsyncClient, merchant: Merchant
) -> None:
    response = await http.post(
        "/merchants", json={"name": "x"}, headers={"Authorization": f"Bearer {merchant.public_key}"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "param"), [({"name": ""}, "name"), ({}, "name"), ({"name": "x", "vip": True}, "vip")]
)
async def test_onboarding_validation_errors_are_400(
    http: httpx.AsyncClient, db: asyncpg.Pool, body: dict[str, object], param: str
) -> None:
    before = await _merchants(db)
    response = await http.post("/merchants", json=body, headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert await _merchants(db) == before


async def test_a_key_roll_retires_the_old_pair_at_once(http: httpx.AsyncClient) -> None:
    old = await onboard(http)
    response = await http.post(f"/merchants/{old.id}/keys/roll", headers=ADMIN)
    assert response.status_code == 200, response.text
    keys = response.json()
    assert keys["id"] == old.id and keys["publicKey"] != old.public_key
    new = Merchant(http, old.id, keys["publicKey"], keys["secretKey"])
    assert (await new.get("/payment-intents")).status_code == 200
    refused = await old.get("/payment-intents")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_a_key_roll_with_a_grace_period_keeps_both_pairs(http: httpx.AsyncClient) -> None:
    old = await onboard(http)
    response = await http.post(
        f"/merchants/{old.id}/keys/roll", json={"gracePeriodSeconds": 3600}, headers=ADMIN
    )
    keys = response.json()
    new = Merchant(http, old.id, keys["publicKey"], keys["secretKey"])
    created = await old.create_intent()
    # Both pairs act as the same merchant.
    assert (await new.get(f"/payment-intents/{created['id']}")).status_code == 200


async def test_a_key_roll_of_an_unknown_merchant_is_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/merchants/mer_nope/keys/roll", headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM merchant WHERE id = $1",
        "UPDATE merchant SET id = id || '-renamed' WHERE id = $1",
    ],
)
async def test_a_merchant_is_never_deleted_or_renamed(
    merchant: Merchant, db: asyncpg.Pool, statement: str
) -> None:
    """Its payments name it without a foreign key: the database keeps the name valid."""
    await merchant.create_intent()
    with pytest.raises(asyncpg.RaiseError, match="never deleted or renamed"):
        await db.execute(statement, merchant.id)
    async with db.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:  # rolled back whatever happens
            with pytest.raises(asyncpg.RaiseError, match="never deleted or renamed"):
                await connection.execute("TRUNCATE merchant CASCADE")
        finally:
            await transaction.rollback()
    assert await db.fetchval("SELECT count(*) FROM merchant WHERE id = $1", merchant.id) == 1


async def test_a_merchants_payments_take_no_lock_on_its_row(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    """A create (intent, event, Idempotency-Key's claim and answer) writes no row whose check
    locks the merchant's row: with that row locked FOR UPDATE elsewhere, it still answers (a
    foreign key's FOR KEY SHARE would wait for the lock holder's commit)."""
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM merchant WHERE id = $1 FOR UPDATE", merchant.id)
        created = await asyncio.wait_for(
            merchant.post(
                "/payment-intents",
                {"amountInCents": 900, "currency": "usd"},
                idempotency_key="row-locked",
            ),
            timeout=60,
        )
    assert created.status_code == 201, created.text
