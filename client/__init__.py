"""Durapay's Python SDK. It imports nothing from the server's packages.

`Durapay`: typed, async, signed, retried (see client/durapay.py). `DurapayClient`: signed
requests with raw `httpx.Response`s. `DurapayAuth`: the `httpx.Auth` that signs.
`client.webhooks.verify`: checks a webhook delivery (Standard Webhooks).
"""

from client import webhooks
from client.durapay import Durapay
from client.errors import (
    APIConnectionError,
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
    WebhookVerificationError,
)
from client.models import (
    Card,
    DeletedWebhookEndpoint,
    DeliveryAttempt,
    Event,
    Page,
    PaymentIntent,
    Transaction,
    WebhookDelivery,
    WebhookEndpoint,
)
from client.pagination import AutoPager
from client.raw import DurapayClient
from client.retry import RetryPolicy
from client.signing import DurapayAuth, sign, signed_headers, wire_path_and_query

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "AutoPager",
    "Card",
    "CardError",
    "ConflictError",
    "DeletedWebhookEndpoint",
    "DeliveryAttempt",
    "Durapay",
    "DurapayAuth",
    "DurapayClient",
    "DurapayError",
    "Event",
    "IdempotencyError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyReusedError",
    "InvalidRequestError",
    "NotFoundError",
    "Page",
    "PaymentIntent",
    "RateLimitError",
    "RetryPolicy",
    "Transaction",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookVerificationError",
    "sign",
    "signed_headers",
    "wire_path_and_query",
    "webhooks",
]
