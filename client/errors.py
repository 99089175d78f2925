"""One exception per error `type` of docs/api.md, built from the API's error object.

try:
    await durapay.payment_intents.charge(intent.id, card=card)
except CardError as declined:
    declined.decline_code, declined.transaction
except DurapayError as error:
    error.type, error.code, error.message, error.param, error.http_status, error.request_id
"""

from __future__ import annotations

from typing import Any

import httpx

from client.models import PaymentIntent, Transaction


class DurapayError(Exception):
    """Anything the SDK raises. `idempotency_key`: the key the request was sent with (POST), to
    retry it later with the same key so that it takes effect at most once."""

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        body: dict[str, Any] | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.http_status = http_status
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.body = body
        self.headers = headers

    def __str__(self) -> str:
        parts = [
            f"HTTP {self.http_status}" if self.http_status else None,
            self.code,
            self.message,
            f"param={self.param}" if self.param else None,
            f"request_id={self.request_id}" if self.request_id else None,
        ]
        return ": ".join(p for p in parts[:3] if p) + "".join(f" ({p})" for p in parts[3:] if p)


class APIConnectionError(DurapayError):
    """No answer from the API (refused, reset, timed out), after the retries."""


class InvalidRequestError(DurapayError):
    """400/413/422 `invalid_request_error`: a parameter is missing or invalid (`param`)."""


class IdempotencyError(DurapayError):
    """A problem with the Idempotency-Key itself (see the two subclasses)."""


class IdempotencyKeyReusedError(InvalidRequestError, IdempotencyError):
    """400 `idempotency_key_reused`: the key was first used with other parameters."""


class AuthenticationError(DurapayError):
    """401 `authentication_error`: unknown or revoked key, bad signature, stale timestamp."""


class CardError(DurapayError):
    """402 `card_error`: the network declined. The failed Transaction (a charge or a refund) or
    the PaymentIntent (a capture or a cancel) comes with it."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        error = (self.body or {}).get("error", {})
        self.decline_code: str | None = error.get("declineCode")
        self.transaction = (
            Transaction.model_validate(error["transaction"])
            if isinstance(error.get("transaction"), dict)
            else None
        )
        self.payment_intent = (
            PaymentIntent.model_validate(error["paymentIntent"])
            if isinstance(error.get("paymentIntent"), dict)
            else None
        )


class NotFoundError(DurapayError):
    """404 `not_found`: no such object (or another merchant's)."""


class ConflictError(DurapayError):
    """409 `conflict`: not allowed in the object's state, or an operation is in flight."""


class IdempotencyKeyInUseError(ConflictError, IdempotencyError):
    """409 `idempotency_key_in_use`: the key's first request is still running; retry later with
    the same key to get its answer."""


class RateLimitError(DurapayError):
    """429 `rate_limit_error`; `retry_after` seconds, as the API asked."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class APIError(DurapayError):
    """5xx `api_error` (e.g. 503 `service_unavailable` while a dependency restarts), or an answer
    that is not the API's error object (a proxy's 502, say)."""


class WebhookVerificationError(DurapayError):
    """A webhook whose signature, timestamp or headers do not hold: do not process it."""


_BY_TYPE: dict[str, type[DurapayError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "card_error": CardError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "rate_limit_error": RateLimitError,
    "api_error": APIError,
}
_BY_CODE: dict[str, type[DurapayError]] = {
    "idempotency_key_reused": IdempotencyKeyReusedError,
    "idempotency_key_in_use": IdempotencyKeyInUseError,
}
_BY_STATUS: dict[int, type[DurapayError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: CardError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_from_response(
    response: httpx.Response,
    *,
    idempotency_key: str | None = None,
    retry_after: float | None = None,
) -> DurapayError:
    """The exception for an answer of status 400 and up: by the error object's `type` (and
    `code`), or by HTTP status when the body is not the API's error object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
        body = None
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    code = error.get("code") if isinstance(error.get("code"), str) else None
    cls = (
        _BY_CODE.get(code or "")
        or _BY_TYPE.get(kind or "")
        or _BY_STATUS.get(response.status_code)
        or (APIError if response.status_code >= 500 else DurapayError)
    )
    message = error.get("message") or (
        f"HTTP {response.status_code} {response.reason_phrase} without the API's error object"
    )
    kwargs: dict[str, Any] = dict(
        type=kind,
        code=code,
        param=error.get("param"),
        http_status=response.status_code,
        request_id=response.headers.get("Request-Id"),
        idempotency_key=idempotency_key,
        body=body,
        headers=response.headers,
    )
    if issubclass(cls, RateLimitError):
        return cls(str(message), retry_after=retry_after, **kwargs)
    return cls(str(message), **kwargs)
