"""Held operations: the caller times out, the network decides anyway."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api

CALLER_TIMEOUT = 0.3


def _post_and_time_out(api: Api, payload: dict[str, object]) -> None:
    with pytest.raises(httpx.TimeoutException):
        api.post(payload, timeout=CALLER_TIMEOUT)


@pytest.mark.parametrize(
    ("number", "status", "decline_code"),
    [("4000000000001018", "approved", None), ("4000000000001026", "declined", "generic_decline")],
)
def test_hold_commits_after_the_caller_has_gone(
    api: Api, number: str, status: str, decline_code: str | None
) -> None:
    ref = api.ref()
    started = time.monotonic()
    _post_and_time_out(api, api.primary(ref, number))

    assert api.status(ref)["status"] == "pending"
    assert api.ledger(ref) == []
    final = api.wait_status(ref, status, within=api.hold_seconds + 3)
    assert final["status"] == status
    assert final["declineCode"] == decline_code
    assert time.monotonic() - started >= api.hold_seconds * 0.9
    [entry] = api.ledger(ref)
    assert entry["status"] == status
    retry = api.post(api.primary(ref, number))
    assert retry.status_code == 200
    assert retry.json()["status"] == status
    assert len(api.ledger(ref)) == 1


def test_patient_caller_gets_the_held_decision(api: Api) -> None:
    ref = api.ref()
    started = time.monotonic()
    response = api.post(api.primary(ref, "4000000000001018"), timeout=api.hold_seconds + 5)
    assert response.status_code == 200
    assert response.json()["status"] == "approved"
    assert time.monotonic() - started >= api.hold_seconds * 0.9


@pytest.mark.asyncio
async def test_second_request_during_a_hold_waits_for_the_same_decision(api: Api) -> None:
    ref = api.ref()
    payload = api.primary(ref, "4000000000001018")
    async with httpx.AsyncClient(
        base_url=api.base_url, timeout=api.hold_seconds + 5, trust_env=False
    ) as client:
        first = asyncio.create_task(client.post("/v1/operations", json=payload))
        await asyncio.sleep(0.2)
        second = await client.post("/v1/operations", json=payload)
        first_response = await first
    assert first_response.json() == second.json()
    assert second.json()["status"] == "approved"
    assert len(api.ledger(ref)) == 1


def test_reference_reuse_during_a_hold_is_409(api: Api) -> None:
    ref = api.ref()
    _post_and_time_out(api, api.primary(ref, "4000000000001018"))
    response = api.post(api.primary(ref, "4000000000001018", amount=1))
    assert response.status_code == 409
    assert api.wait_status(ref, "approved")["status"] == "approved"


def test_slow_status_card_is_pending_for_five_queries_then_approved(api: Api) -> None:
    ref = api.ref()
    _post_and_time_out(api, api.primary(ref, "4000000000001059"))

    for _ in range(5):
        assert api.status(ref)["status"] == "pending"
    assert api.ledger(ref) == []
    assert api.status(ref)["status"] == "approved"
    [entry] = api.ledger(ref)
    assert entry["status"] == "approved"
    assert api.post(api.primary(ref, "4000000000001059")).json()["status"] == "approved"


def test_slow_status_card_answers_202_pending_to_a_patient_caller(api: Api) -> None:
    ref = api.ref()
    response = api.post(api.primary(ref, "4000000000001059"), timeout=api.hold_seconds + 5)
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert api.ledger(ref) == []
