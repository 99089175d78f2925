"""Idempotency by reference: one ledger entry per reference, conflicts are 409."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api


@pytest.mark.parametrize("number", ["4242424242424242", "4000000000000002"])
def test_same_reference_twice_gives_same_answer_and_one_entry(api: Api, number: str) -> None:
    ref = api.ref()
    first = api.post(api.primary(ref, number))
    second = api.post(api.primary(ref, number))

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(api.ledger(ref)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"amountInCents": 999},
        {"currency": "eur"},
        {"type": "authorize"},
        {"card": {"number": "5555555555554444", "expMonth": 12, "expYear": 2030, "cvc": "123"}},
    ],
)
def test_reference_reused_for_a_different_operation_is_409(
    api: Api, change: dict[str, object]
) -> None:
    ref = api.ref()
    payload = api.primary(ref)
    assert api.post(payload).status_code == 200

    response = api.post({**payload, **change})
    assert response.status_code == 409
    assert response.json()["error"] == "reference_reused"
    [entry] = api.ledger(ref)
    assert entry["amountInCents"] == payload["amountInCents"]


def test_currency_case_does_not_count_as_a_different_operation(api: Api) -> None:
    ref = api.ref()
    assert api.post(api.primary(ref, currency="usd")).status_code == 200
    assert api.post(api.primary(ref, currency="USD")).status_code == 200
    assert len(api.ledger(ref)) == 1


def test_ledger_lists_entries_oldest_first(api: Api) -> None:
    refs = [api.ref("order") for _ in range(3)]
    for ref in refs:
        api.post(api.primary(ref))
    listed = [e["reference"] for e in api.ledger() if e["reference"] in refs]
    assert listed == refs


@pytest.mark.asyncio
async def test_concurrent_duplicates_create_one_entry(api: Api) -> None:
    ref = api.ref()
    payload = api.primary(ref)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10, trust_env=False) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/operations", json=payload) for _ in range(10))
        )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["createdAt"] for r in responses}) == 1
    assert len(api.ledger(ref)) == 1
