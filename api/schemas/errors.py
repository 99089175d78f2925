"""The error object, as the OpenAPI document shows it: `{"error": {type, code, message,
param}}`, one schema per HTTP status, each with the `type` that status always carries and,
where the set is closed, the `code`s it can have. Documentation only: errors are rendered by
`api/errors.py` (`ApiError.body()`), and the Schemathesis run checks real answers against
these schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.json_schema import JsonDict

from api.schemas.base import ApiModel
from api.schemas.payment_intents import PAYMENT_INTENT_EXAMPLE, PaymentIntentOut
from api.schemas.transactions import TRANSACTION_EXAMPLE, TransactionOut

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "card_error",
    "not_found",
    "conflict",
    "rate_limit_error",
    "api_error",
]


def _example(type_: str, code: str, message: str, param: str | None = None) -> ConfigDict:
    return ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"type": type_, "code": code, "message": message, "param": param}}
            ]
        }
    )


class ErrorDetail(ApiModel):
    type: ErrorType
    code: str = Field(description="Stable, machine-readable; the message may change.")
    message: str = Field(description="For people; never holds card data or a stack trace.")
    param: str | None = Field(
        description="The request parameter (camelCase) or header at fault, or null."
    )


class ErrorResponse(ApiModel):
    """Any error (an unlisted status, say)."""

    error: ErrorDetail


class InvalidRequestDetail(ErrorDetail):
    type: Literal["invalid_request_error"]
    code: str = Field(
        description=(
            "e.g. `parameter_missing`, `parameter_invalid`, `parameter_unknown`, `invalid_json`, "
            "`card_number_invalid`, `amount_too_large`, `resource_missing` (a `startingAfter` "
            "that names nothing of yours), `idempotency_key_reused`, `idempotency_key_invalid`, "
            "`url_not_allowed`, `webhook_endpoint_limit_reached`, `redelivery_limit_reached`"
        )
    )


class InvalidRequestErrorResponse(ApiModel):
    model_config = _example(
        "invalid_request_error",
        "parameter_missing",
        "Missing required parameter: currency.",
        "currency",
    )
    error: InvalidRequestDetail


class AuthenticationDetail(ErrorDetail):
    type: Literal["authentication_error"]
    code: Literal[
        "missing_api_key",
        "missing_signature",
        "timestamp_out_of_window",
        "invalid_nonce",
        "invalid_api_key",
        "invalid_signature",
        "replayed_nonce",
        "duplicate_header",
        "invalid_admin_token",
    ]


class AuthenticationErrorResponse(ApiModel):
    model_config = _example(
        "authentication_error", "invalid_signature", "The request signature does not match."
    )
    error: AuthenticationDetail


class CardErrorDetail(ErrorDetail):
    type: Literal["card_error"]
    code: str = Field(
        description="`card_declined` (see `declineCode`), or the network's "
        "failure code such as `processing_error`."
    )
    decline_code: str | None = Field(
        description="Why the issuer declined, e.g. `insufficient_funds`; null for a failure."
    )


class TransactionCardErrorDetail(CardErrorDetail):
    transaction: TransactionOut = Field(description="The failed Transaction.")


class PaymentIntentCardErrorDetail(CardErrorDetail):
    payment_intent: PaymentIntentOut = Field(description="The PaymentIntent as it stands.")


_DECLINED_TRANSACTION: JsonDict = {
    **TRANSACTION_EXAMPLE,
    "status": "failed",
    "failureCode": "card_declined",
    "declineCode": "insufficient_funds",
}
_CARD_DECLINED: JsonDict = {
    "type": "card_error",
    "code": "card_declined",
    "param": None,
    "message": "The card network declined the charge (insufficient_funds).",
    "declineCode": "insufficient_funds",
}


class TransactionCardErrorResponse(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {**_CARD_DECLINED, "transaction": _DECLINED_TRANSACTION}}]
        }
    )
    error: TransactionCardErrorDetail


class PaymentIntentCardErrorResponse(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        **_CARD_DECLINED,
                        "paymentIntent": {
                            **PAYMENT_INTENT_EXAMPLE,
                            "status": "failed",
                            "amountReceived": 0,
                            "lastError": {
                                "type": "card_error",
                                "code": "card_declined",
                                "declineCode": "insufficient_funds",
                                "message": "The card was declined (insufficient_funds).",
                            },
                            "transactions": [_DECLINED_TRANSACTION],
                        },
                    }
                }
            ]
        }
    )
    error: PaymentIntentCardErrorDetail


class NotFoundDetail(ErrorDetail):
    type: Literal["not_found"]
    code: Literal["resource_missing"]


class NotFoundErrorResponse(ApiModel):
    model_config = _example(
        "not_found", "resource_missing", "No such payment_intent: 'pi_3f9c2a7e51b04d8e6a1c0b27'"
    )
    error: NotFoundDetail


class ConflictDetail(ErrorDetail):
    type: Literal["conflict"]
    code: Literal[
        "idempotency_key_in_use",
        "attempt_in_flight",
        "payment_intent_unexpected_state",
        "endpoint_disabled",
    ]


class ConflictErrorResponse(ApiModel):
    model_config = _example(
        "conflict",
        "payment_intent_unexpected_state",
        "Cannot capture this PaymentIntent in status 'succeeded'.",
    )
    error: ConflictDetail


class RequestTooLargeDetail(ErrorDetail):
    type: Literal["invalid_request_error"]
    code: Literal["request_too_large"]


class RequestTooLargeErrorResponse(ApiModel):
    model_config = _example(
        "invalid_request_error",
        "request_too_large",
        "The request body is larger than the 65536 bytes this API accepts.",
    )
    error: RequestTooLargeDetail


class RequestTimeoutDetail(ErrorDetail):
    type: Literal["invalid_request_error"]
    code: Literal["request_timeout"]


class RequestTimeoutErrorResponse(ApiModel):
    model_config = _example(
        "invalid_request_error",
        "request_timeout",
        "The request body did not arrive within 10 seconds.",
    )
    error: RequestTimeoutDetail


class RateLimitDetail(ErrorDetail):
    type: Literal["rate_limit_error"]
    code: Literal["rate_limit_exceeded"]


class RateLimitErrorResponse(ApiModel):
    model_config = _example(
        "rate_limit_error",
        "rate_limit_exceeded",
        "Too many requests with this API key: at most 100 a second on "
        "average, in bursts of 200. Retry after the delay in Retry-After "
        "(seconds).",
    )
    error: RateLimitDetail


class InternalErrorDetail(ErrorDetail):
    type: Literal["api_error"]
    code: Literal["internal_error"]


class InternalErrorResponse(ApiModel):
    model_config = _example(
        "api_error", "internal_error", "An internal error occurred; it has been logged."
    )
    error: InternalErrorDetail


class ServiceUnavailableDetail(ErrorDetail):
    type: Literal["api_error"]
    code: Literal["service_unavailable"]


class ServiceUnavailableErrorResponse(ApiModel):
    model_config = _example(
        "api_error",
        "service_unavailable",
        "Durapay cannot reach a service it depends on right now; nothing "
        "was lost. Retry the request (with the same Idempotency-Key) "
        "shortly.",
    )
    error: ServiceUnavailableDetail
