"""Error objects become one exception per error `type` of docs/api.md (and the idempotency
codes)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from client import (
    APIError,
    AuthenticationError,
    CardError,
    ConflictError,
    DurapayError,
    IdempotencyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
)
from client.errors import error_from_response

TXN = {
    "id": "txn_1",
    "object": "transaction",
    "paymentIntentId": "pi_1",
    "type": "charge",
    "amountInCents": 2499,
    "currency": "usd",
    "status": "failed",
    "networkReference": "txn_1",
    "card": {"brand": "visa", "last4": "0002", "expMonth": 12, "expYear": 2030},
    "failureCode": "card_declined",
    "declineCode": "generic_decline",
    "reconciled": False,
    "createdAt": "2026-01-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:00:01Z",
}


def answer(status: int, error: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": error} if error is not None else None,
        headers={"Request-Id": "req_abc", **headers},
    )


@pytest.mark.parametrize(
    ("status", "kind", "code", "exception"),
    [
        (400, "invalid_request_error", "parameter_invalid", InvalidRequestError),
        (422, "invalid_request_error", "parameter_invalid", InvalidRequestError),
        (413, "invalid_request_error", "request_too_large", InvalidRequestError),
        (401, "authentication_error", "invalid_signature", AuthenticationError),
        (404, "not_found", "resource_missing", NotFoundError),
        (409, "conflict", "payment_intent_unexpected_state", ConflictError),
        (429, "rate_limit_error", "rate_limit_exceeded", RateLimitError),
        (500, "api_error", "internal_error", APIError),
        (503, "api_error", "service_unavailable", APIError),
        (400, "invalid_request_error", "idempotency_key_reused", IdempotencyKeyReusedError),
        (409, "conflict", "idempotency_key_in_use", IdempotencyKeyInUseError),
    ],
)
def test_each_error_type_has_its_exception(
    status: int, kind: str, code: str, exception: type[DurapayError]
) -> None:
    error = error_from_response(
        answer(status, {"type": kind, "code": code, "message": "what happened", "param": "amount"}),
        idempotency_key="key-1",
    )
    assert type(error) is exception
    assert (error.type, error.code, error.message, error.param) == (
        kind,
        code,
        "what happened",
        "amount",
    )
    assert error.http_status == status and error.request_id == "req_abc"
    assert error.idempotency_key == "key-1"
    assert "what happened" in str(error) and "req_abc" in str(error)


def test_idempotency_errors_are_also_their_types_errors() -> None:
    assert issubclass(IdempotencyKeyReusedError, InvalidRequestError)
    assert issubclass(IdempotencyKeyInUseError, ConflictError)
    assert issubclass(IdempotencyKeyInUseError, IdempotencyError)


def test_a_decline_carries_its_code_and_transaction() -> None:
    error = error_from_response(
        answer(
            402,
            {
                "type": "card_error",
                "code": "card_declined",
                "message": "declined",
                "param": None,
                "declineCode": "generic_decline",
                "transaction": TXN,
            },
        )
    )
    assert isinstance(error, CardError)
    assert error.decline_code == "generic_decline"
    assert error.transaction is not None and error.transaction.card is not None
    assert error.transaction.id == "txn_1" and error.transaction.card.last4 == "0002"
    assert error.payment_intent is None


def test_an_answer_without_the_error_object_maps_by_status() -> None:
    proxy = httpx.Response(502, text="<html>Bad Gateway</html>")
    error = error_from_response(proxy)
    assert isinstance(error, APIError) and error.code is None and error.http_status == 502
    assert isinstance(error_from_response(httpx.Response(404, text="nope")), NotFoundError)
    assert type(error_from_response(httpx.Response(418, json={"x": 1}))) is DurapayError


def test_an_unknown_future_type_falls_back_on_the_status() -> None:
    error = error_from_response(
        answer(400, {"type": "brand_new_error", "code": "x", "message": "m", "param": None})
    )
    assert isinstance(error, InvalidRequestError) and error.type == "brand_new_error"
