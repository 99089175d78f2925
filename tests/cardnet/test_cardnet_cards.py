"""Each test card's decision, ledger entry and transport behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api

DECISIONS = [
    ("4242424242424242", "approved", None, "visa"),
    ("5555555555554444", "approved", None, "mastercard"),
    ("4000000000000002", "declined", "generic_decline", "visa"),
    ("4000000000009995", "declined", "insufficient_funds", "visa"),
    ("4000000000000069", "declined", "expired_card", "visa"),
    ("4000000000000127", "declined", "incorrect_cvc", "visa"),
    # Any other number is approved, brand from the prefix.
    ("378282246310005", "approved", None, "amex"),
    ("6011111111111117", "approved", None, "discover"),
    ("2223003122003222", "approved", None, "mastercard"),
    ("3566002020360505", "approved", None, "unknown"),
]


@pytest.mark.parametrize(("number", "status", "decline_code", "brand"), DECISIONS)
@pytest.mark.parametrize("type_", ["charge", "authorize"])
def test_card_decision_and_ledger_entry(
    api: Api, number: str, status: str, decline_code: str | None, brand: str, type_: str
) -> None:
    ref = api.ref()
    response = api.post(api.primary(ref, number, amount=1234, type_=type_, currency="USD"))

    assert response.status_code == 200
    body = response.json()
    assert body["reference"] == ref
    assert body["type"] == type_
    assert body["status"] == status
    assert body["declineCode"] == decline_code
    assert body["brand"] == brand
    assert body["amountInCents"] == 1234
    assert body["currency"] == "usd"
    assert body["createdAt"].endswith("Z")
    [entry] = api.ledger(ref)
    assert entry["status"] == status
    assert entry["type"] == type_
    assert entry["amountInCents"] == 1234
    assert api.status(ref)["status"] == status


def test_processing_error_card_is_503_every_time_and_charges_nothing(api: Api) -> None:
    ref = api.ref()
    for _ in range(3):
        response = api.post(api.primary(ref, "4000000000000119"))
        assert response.status_code == 503
        assert response.json()["error"] == "network_unavailable"
    assert api.ledger(ref) == []
    assert api.status(ref)["status"] == "not_found"


def test_flaky_card_fails_twice_then_approves_same_reference(api: Api) -> None:
    ref = api.ref()
    payload = api.primary(ref, "4000000000001042")
    assert api.post(payload).status_code == 503
    assert api.post(payload).status_code == 503
    assert api.ledger(ref) == []
    third = api.post(payload)
    assert third.status_code == 200
    assert third.json()["status"] == "approved"
    assert api.post(payload).json()["status"] == "approved"
    assert len(api.ledger(ref)) == 1


def test_flaky_card_counts_per_reference(api: Api) -> None:
    assert api.post(api.primary(api.ref(), "4000000000001042")).status_code == 503
    assert api.post(api.primary(api.ref(), "4000000000001042")).status_code == 503


def test_lost_response_card_commits_but_drops_the_connection(api: Api) -> None:
    ref = api.ref()
    payload = api.primary(ref, "4000000000001034")
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(payload)

    [entry] = api.ledger(ref)
    assert entry["status"] == "approved"
    retry = api.post(payload)
    assert retry.status_code == 200
    assert retry.json()["status"] == "approved"
    assert retry.json()["createdAt"] == entry["createdAt"]
    assert len(api.ledger(ref)) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"reference": "x", "type": "charge", "amountInCents": 100, "currency": "usd"},
        {"reference": "x", "type": "refund", "amountInCents": 100, "currency": "usd"},
        {"reference": "", "type": "charge", "amountInCents": 100, "currency": "usd"},
        {
            "reference": "x" * 101,
            "type": "capture",
            "amountInCents": 1,
            "currency": "usd",
            "parentReference": "p",
        },
        {
            "reference": "x",
            "type": "capture",
            "amountInCents": 0,
            "currency": "usd",
            "parentReference": "p",
        },
        {
            "reference": "x",
            "type": "capture",
            "amountInCents": "5",
            "currency": "usd",
            "parentReference": "p",
        },
        {
            "reference": "x",
            "type": "teleport",
            "amountInCents": 5,
            "currency": "usd",
            "parentReference": "p",
        },
        {
            "reference": "x",
            "type": "void",
            "amountInCents": 5,
            "currency": "dollars",
            "parentReference": "p",
        },
        {
            "reference": "x",
            "type": "charge",
            "amountInCents": 5,
            "currency": "usd",
            "card": {"number": "4242", "expMonth": 1, "expYear": 2030, "cvc": None},
        },
        {
            "reference": "x",
            "type": "charge",
            "amountInCents": 5,
            "currency": "usd",
            "card": {"number": "4242424242424242", "expMonth": 13, "expYear": 2030},
        },
    ],
)
def test_malformed_bodies_are_422_with_json_error(api: Api, payload: dict[str, object]) -> None:
    response = api.http.post("/v1/operations", json=payload)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_invalid_json_is_422(api: Api) -> None:
    response = api.http.post(
        "/v1/operations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_healthz(api: Api) -> None:
    response = api.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_reference_status_is_not_found(api: Api) -> None:
    body = api.status("never-seen")
    assert body["status"] == "not_found"
    assert body["reference"] == "never-seen"
