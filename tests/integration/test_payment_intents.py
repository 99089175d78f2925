"""PaymentIntents over real HTTP: create, validate, idempotency, list and paginate."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from client import DurapayClient
from tests.integration.conftest import create_intent
from tests.stack import RunningStack


async def test_health_reports_postgres_and_temporal(stack: RunningStack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{stack.api_url}/healthz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "temporal": "ok"}


async def test_create_returns_the_contract_shape(durapay: DurapayClient) -> None:
    response = await durapay.post(
        "/payment-intents",
        {
            "amountInCents": 2499,
            "currency": "usd",
            "description": "Order#1234",
            "captureMethod": "automatic",
            "metadata": {"orderId": "1234"},
        },
    )
    assert response.status_code == 201, response.text
    intent = response.json()
    assert intent["id"].startswith("pi_")
    assert intent == {
        **intent,
        "object": "payment_intent",
        "amountInCents": 2499,
        "currency": "usd",
        "description": "Order#1234",
        "status": "created",
        "captureMethod": "automatic",
        "amountCapturable": 0,
        "amountReceived": 0,
        "amountRefunded": 0,
        "lastError": None,
        "metadata": {"orderId": "1234"},
        "transactions": [],
    }
    assert intent["createdAt"].endswith("Z") and intent["updatedAt"].endswith("Z")
    fetched = await durapay.get(f"/payment-intents/{intent['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == intent


async def test_validation_errors_name_the_param_and_change_nothing(durapay: DurapayClient) -> None:
    bad_bodies: dict[str, list[dict[str, Any]]] = {
        "amountInCents": [
            {"currency": "usd"},
            {"amountInCents": 0, "currency": "usd"},
            {"amountInCents": 100_000_000, "currency": "usd"},
            {"amountInCents": "100", "currency": "usd"},
            {"amountInCents": 10.5, "currency": "usd"},
        ],
        "currency": [
            {"amountInCents": 100, "currency": "xyz"},
            {"amountInCents": 100, "currency": "USD"},
            {"amountInCents": 100},
        ],
        "captureMethod": [{"amountInCents": 100, "currency": "usd", "captureMethod": "later"}],
        "bogus": [{"amountInCents": 100, "currency": "usd", "bogus": 1}],
    }
    for param, bodies in bad_bodies.items():
        for body in bodies:
            response = await durapay.post("/payment-intents", body)
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param, (body, error)
            assert error["message"]
    malformed = await durapay.request("POST", "/payment-intents", None)
    assert malformed.status_code == 400
    listed = await durapay.get("/payment-intents")
    assert listed.json()["data"] == []


async def test_idempotent_create_replays_and_refuses_other_bodies(durapay: DurapayClient) -> None:
    key = f"order-{uuid.uuid4()}"
    body = {"amountInCents": 1500, "currency": "eur"}
    first = await durapay.post("/payment-intents", body, idempotency_key=key)
    again = await durapay.post("/payment-intents", body, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    different = await durapay.post(
        "/payment-intents", {**body, "amountInCents": 1600}, idempotency_key=key
    )
    assert different.status_code == 400
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    listed = (await durapay.get("/payment-intents")).json()["data"]
    assert [i["id"] for i in listed] == [first.json()["id"]]


async def test_list_is_newest_first_with_cursor_pagination(durapay: DurapayClient) -> None:
    created = [(await create_intent(durapay, amount=100 + n))["id"] for n in range(5)]
    page1 = (await durapay.get("/payment-intents?limit=2")).json()
    assert [i["id"] for i in page1["data"]] == created[::-1][:2]
    assert page1["hasMore"] is True
    page2 = (
        await durapay.get(f"/payment-intents?limit=2&startingAfter={page1['data'][-1]['id']}")
    ).json()
    assert [i["id"] for i in page2["data"]] == created[::-1][2:4]
    page3 = (
        await durapay.get(f"/payment-intents?limit=2&startingAfter={page2['data'][-1]['id']}")
    ).json()
    assert [i["id"] for i in page3["data"]] == created[::-1][4:]
    assert page3["hasMore"] is False
    filtered = (await durapay.get("/payment-intents?status=succeeded")).json()
    assert filtered["data"] == []
    bad = await durapay.get("/payment-intents?status=nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "status"


async def test_unknown_intent_is_404(durapay: DurapayClient) -> None:
    response = await durapay.get("/payment-intents/pi_doesnotexist")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


async def test_a_crash_before_the_idempotent_answer_is_stored_leaves_no_intent(
    durapay: DurapayClient, merchant: dict[str, Any], db: asyncpg.Pool
) -> None:
    """The intent and the stored answer to its Idempotency-Key commit together: if storing the
    answer fails (here a trigger plays the crash), no intent exists, so the merchant's retry
    creates exactly one."""
    key = f"crash-{uuid.uuid4().hex[:8]}"
    trigger = f"refuse_{key.replace('-', '_')}"
    await db.execute(f"""
        CREATE FUNCTION {trigger}() RETURNS trigger AS $$ BEGIN
          IF NEW.key = '{key}' AND NEW.response_status IS NOT NULL THEN
            RAISE EXCEPTION 'simulated crash before the answer is stored';
          END IF;
          RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER {trigger} BEFORE UPDATE ON idempotency_record
          FOR EACH ROW EXECUTE FUNCTION {trigger}();""")
    body = {"amountInCents": 1234, "currency": "usd"}
    try:
        crashed = await durapay.post("/payment-intents", body, idempotency_key=key)
        assert crashed.status_code >= 500, crashed.text
        assert await _intents_of(db, merchant["id"]) == 0
    finally:
        await db.execute(
            f"DROP TRIGGER {trigger} ON idempotency_record; DROP FUNCTION {trigger}();"
        )
    # The claim of the crashed request is abandoned after a while; then the retry runs.
    await db.execute(
        "UPDATE idempotency_record SET created_at = now() - interval '2 minutes' WHERE key = $1",
        key,
    )
    retried = await durapay.post("/payment-intents", body, idempotency_key=key)
    assert retried.status_code == 201, retried.text
    replayed = await durapay.post("/payment-intents", body, idempotency_key=key)
    assert replayed.json()["id"] == retried.json()["id"]
    assert await _intents_of(db, merchant["id"]) == 1


async def _intents_of(db: asyncpg.Pool, merchant_id: str) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM payment_intent WHERE merchant_id = $1", merchant_id)
    )
