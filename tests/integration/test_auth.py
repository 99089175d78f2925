"""Signed requests: every way a request can fail authentication, and merchant isolation."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from client import DurapayClient, signed_headers
from tests.integration.conftest import create_intent, onboard
from tests.signed_escapes import check_escaped_requests_are_verified
from tests.stack import RunningStack


def _headers(
    merchant: dict[str, Any], method: str, path: str, body: bytes, **overrides: Any
) -> dict[str, str]:
    headers = signed_headers(
        public_key=merchant["publicKey"],
        secret_key=merchant["secretKey"],
        method=method,
        path_and_query=path,
        body=body,
        timestamp=overrides.pop("timestamp", None),
        nonce=overrides.pop("nonce", None),
    )
    headers["Content-Type"] = "application/json"
    return headers


async def _count_intents(durapay: DurapayClient) -> int:
    return len((await durapay.get("/payment-intents?limit=100")).json()["data"])


async def test_onboarding_returns_keys_once(admin: httpx.AsyncClient) -> None:
    merchant = await onboard(admin, "Acme")
    assert merchant["id"].startswith("mer_")
    assert merchant["publicKey"].startswith("pk_test_")
    assert merchant["secretKey"].startswith("sk_test_")
    assert merchant["name"] == "Acme"


async def test_onboarding_without_admin_token_is_rejected(stack: RunningStack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        for auth in (None, "Bearer wrong-token"):
            headers = {"Authorization": auth} if auth else {}
            response = await http.post("/merchants", json={"name": "x"}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"


async def test_signed_request_is_accepted(durapay: DurapayClient) -> None:
    response = await durapay.get("/payment-intents")
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "list", "data": [], "hasMore": False}


async def test_auth_failures_are_401_and_change_nothing(
    stack: RunningStack, merchant: dict[str, Any], durapay: DurapayClient
) -> None:
    path = "/payment-intents"
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    stale = int(time.time()) - 301
    cases: dict[str, dict[str, str]] = {
        "bad signature": {
            **_headers(merchant, "POST", path, body),
            "X-Signature": "v1=" + "0" * 64,
        },
        "stale timestamp": _headers(merchant, "POST", path, body, timestamp=stale),
        # Well past the 300 s tolerance: a request slowed by a busy machine stays refused.
        "future timestamp": _headers(
            merchant, "POST", path, body, timestamp=int(time.time()) + 360
        ),
        "unknown key": {
            **_headers(merchant, "POST", path, body),
            "Authorization": "Bearer pk_test_" + "0" * 32,
        },
        "missing signature": {"Authorization": f"Bearer {merchant['publicKey']}"},
        "bad nonce": _headers(merchant, "POST", path, body, nonce="short"),
        "signed for another path": _headers(merchant, "POST", "/payment-intents?x=1", body),
    }
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        for name, headers in cases.items():
            response = await http.post(path, content=body, headers=headers)
            assert response.status_code == 401, name
            error = response.json()["error"]
            assert error["type"] == "authentication_error", name
            assert set(error) >= {"type", "code", "message", "param"}
        # Body tampered after signing.
        headers = _headers(merchant, "POST", path, body)
        tampered = body.replace(b"100", b"999")
        response = await http.post(path, content=tampered, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
    assert await _count_intents(durapay) == 0


async def test_replayed_nonce_is_rejected(
    stack: RunningStack, merchant: dict[str, Any], durapay: DurapayClient
) -> None:
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    headers = _headers(merchant, "POST", "/payment-intents", body)
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        first = await http.post("/payment-intents", content=body, headers=headers)
        replay = await http.post("/payment-intents", content=body, headers=headers)
    assert first.status_code == 201
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "replayed_nonce"
    assert await _count_intents(durapay) == 1


async def test_rolled_key_stops_working(
    stack: RunningStack, admin: httpx.AsyncClient, merchant: dict[str, Any]
) -> None:
    rolled = await admin.post(f"/merchants/{merchant['id']}/keys/roll", json={})
    assert rolled.status_code == 200, rolled.text
    new = rolled.json()
    assert new["publicKey"] != merchant["publicKey"]
    async with DurapayClient(stack.api_url, merchant["publicKey"], merchant["secretKey"]) as old:
        assert (await old.get("/payment-intents")).status_code == 401
    async with DurapayClient(stack.api_url, new["publicKey"], new["secretKey"]) as fresh:
        assert (await fresh.get("/payment-intents")).status_code == 200


async def test_rolled_key_keeps_working_during_grace_period(
    stack: RunningStack, admin: httpx.AsyncClient, merchant: dict[str, Any]
) -> None:
    rolled = await admin.post(
        f"/merchants/{merchant['id']}/keys/roll", json={"gracePeriodSeconds": 3600}
    )
    assert rolled.status_code == 200
    async with DurapayClient(stack.api_url, merchant["publicKey"], merchant["secretKey"]) as old:
        assert (await old.get("/payment-intents")).status_code == 200


async def test_other_merchants_objects_are_not_found(
    stack: RunningStack, admin: httpx.AsyncClient, durapay: DurapayClient
) -> None:
    intent = await create_intent(durapay)
    other = await onboard(admin, "Other")
    async with DurapayClient(stack.api_url, other["publicKey"], other["secretKey"]) as intruder:
        for response in (
            await intruder.get(f"/payment-intents/{intent['id']}"),
            await intruder.get(f"/payment-intents/{intent['id']}/events"),
            await intruder.post(
                f"/payment-intents/{intent['id']}/transactions",
                {
                    "type": "charge",
                    "card": {
                        "number": "4242424242424242",
                        "expMonth": 12,
                        "expYear": 2030,
                        "cvc": "123",
                    },
                },
            ),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["type"] == "not_found"
        listed = (await intruder.get("/payment-intents")).json()["data"]
        assert intent["id"] not in [i["id"] for i in listed]
        events = (await intruder.get("/events")).json()["data"]
        assert all(e["data"]["paymentId"] != intent["id"] for e in events)
    # The owner's intent was not touched by the intruder's charge attempt.
    assert (await durapay.get(f"/payment-intents/{intent['id']}")).json()["status"] == "created"


async def test_percent_escapes_signed_as_sent_pass_through_uvicorn(durapay: DurapayClient) -> None:
    """uvicorn hands the API the request line as received (`raw_path`, `query_string`), which
    is what the client signed: an escaped id or query value is no signature mismatch."""
    intent = await create_intent(durapay)
    await check_escaped_requests_are_verified(durapay, intent["id"])
