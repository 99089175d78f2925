"""Capture, void and refund rules against their parent operation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api


def _approved(api: Api, type_: str, amount: int = 1000) -> str:
    ref = api.ref(type_)
    assert api.post(api.primary(ref, amount=amount, type_=type_)).json()["status"] == "approved"
    return ref


def _child(api: Api, type_: str, parent: str, amount: int, **kw: Any) -> dict[str, Any]:
    response = api.post(api.child(api.ref(type_), type_, parent, amount, **kw))
    assert response.status_code == 200
    return response.json()


def _expect(body: dict[str, Any], status: str, decline_code: str | None = None) -> None:
    assert (body["status"], body["declineCode"]) == (status, decline_code)


def test_capture_rules(api: Api) -> None:
    auth = _approved(api, "authorize")
    _expect(_child(api, "capture", auth, 1001), "declined", "invalid_amount")
    _expect(_child(api, "capture", auth, 500, currency="eur"), "declined", "currency_mismatch")
    captured = _child(api, "capture", auth, 800)
    _expect(captured, "approved")
    assert captured["brand"] == "visa"
    assert captured["parentReference"] == auth
    _expect(_child(api, "capture", auth, 100), "declined", "already_captured")
    _expect(_child(api, "capture", "missing-parent", 100), "declined", "parent_not_found")
    _expect(_child(api, "capture", _approved(api, "charge"), 100), "declined", "invalid_parent")


def test_capture_of_a_declined_authorization_is_declined(api: Api) -> None:
    ref = api.ref()
    api.post(api.primary(ref, "4000000000000002", type_="authorize"))
    _expect(_child(api, "capture", ref, 100), "declined", "invalid_parent")


def test_void_rules(api: Api) -> None:
    auth = _approved(api, "authorize")
    _expect(_child(api, "void", auth, 1000), "approved")
    _expect(_child(api, "void", auth, 1000), "declined", "already_voided")
    _expect(_child(api, "capture", auth, 1000), "declined", "authorization_voided")

    captured_auth = _approved(api, "authorize")
    _expect(_child(api, "capture", captured_auth, 1000), "approved")
    _expect(_child(api, "void", captured_auth, 1000), "declined", "already_captured")
    _expect(_child(api, "void", _approved(api, "charge"), 1000), "declined", "invalid_parent")
    _expect(_child(api, "void", "missing-parent", 1000), "declined", "parent_not_found")


def test_refund_rules(api: Api) -> None:
    charge = _approved(api, "charge", amount=1000)
    _expect(_child(api, "refund", charge, 600), "approved")
    _expect(_child(api, "refund", charge, 401), "declined", "amount_exceeds_captured")
    _expect(_child(api, "refund", charge, 400), "approved")
    _expect(_child(api, "refund", charge, 1), "declined", "amount_exceeds_captured")

    auth = _approved(api, "authorize", amount=1000)
    _expect(_child(api, "refund", auth, 100), "declined", "invalid_parent")
    capture = _child(api, "capture", auth, 700)["reference"]
    _expect(_child(api, "refund", capture, 701), "declined", "amount_exceeds_captured")
    _expect(_child(api, "refund", capture, 700), "approved")
    _expect(_child(api, "refund", "missing-parent", 1), "declined", "parent_not_found")


def test_declined_child_operations_are_in_the_ledger_and_idempotent(api: Api) -> None:
    ref = api.ref("refund")
    payload = api.child(ref, "refund", "missing-parent", 5)
    first, second = api.post(payload).json(), api.post(payload).json()
    assert first == second
    [entry] = api.ledger(ref)
    assert entry["status"] == "declined"


@pytest.mark.asyncio
async def test_concurrent_refunds_never_exceed_the_charge(api: Api) -> None:
    charge = _approved(api, "charge", amount=1000)
    payloads = [api.child(api.ref("refund"), "refund", charge, 150) for _ in range(20)]
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10, trust_env=False) as client:
        responses = await asyncio.gather(*(client.post("/v1/operations", json=p) for p in payloads))
    bodies = [r.json() for r in responses]
    approved = [b for b in bodies if b["status"] == "approved"]
    assert len(approved) == 6  # 6 x 150 = 900 <= 1000 < 7 x 150
    assert {b["declineCode"] for b in bodies if b["status"] == "declined"} == {
        "amount_exceeds_captured"
    }
    refunds = [e for e in api.ledger() if e["parentReference"] == charge]
    assert len(refunds) == 20
    assert sum(e["amountInCents"] for e in refunds if e["status"] == "approved") <= 1000
