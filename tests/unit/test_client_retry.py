"""The SDK's retries, with the API faked by httpx.MockTransport (pure client logic): which
answers are retried, how long it waits, and that a POST keeps its Idempotency-Key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from client import (
    APIConnectionError,
    APIError,
    ConflictError,
    Durapay,
    IdempotencyKeyInUseError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
)
from client.retry import repeats_safely, retry_after_seconds

INTENT = {
    "id": "pi_1",
    "object": "payment_intent",
    "amountInCents": 2499,
    "currency": "usd",
    "status": "created",
    "createdAt": "2026-01-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:00:00Z",
}


def error(
    status: int, kind: str, code: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers,
        json={"error": {"type": kind, "code": code, "message": f"{code} happened", "param": None}},
    )


class FakeApi:
    """Answers from a script (the last answer repeats); records requests and the waits."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def durapay(self, max_retries: int = 2, **policy: Any) -> Durapay:
        return Durapay(
            "http://durapay.test",
            "pk_test_x",
            "sk_test_y",
            retry=RetryPolicy(max_retries=max_retries, **policy),
            transport=httpx.MockTransport(self.handle),
            sleep=self.sleep,
        )

    def header(self, name: str) -> list[str | None]:
        return [r.headers.get(name) for r in self.requests]


async def create(api: FakeApi, **kwargs: Any) -> Any:
    async with api.durapay(**kwargs) as durapay:
        return await durapay.payment_intents.create(amount_in_cents=2499, currency="usd")


async def test_post_retried_after_503s_keeps_its_idempotency_key_and_is_resigned() -> None:
    api = FakeApi(
        error(503, "api_error", "service_unavailable"),
        error(500, "api_error", "internal_error"),
        httpx.Response(201, json=INTENT),
    )
    intent = await create(api)
    assert intent.id == "pi_1"
    keys = api.header("Idempotency-Key")
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert len(set(api.header("X-Nonce"))) == 3  # re-signed: a new nonce every attempt
    assert len(set(api.header("X-Signature"))) == 3
    assert len(api.sleeps) == 2


async def test_each_post_call_gets_its_own_key_and_a_given_key_is_used() -> None:
    api = FakeApi(httpx.Response(201, json=INTENT))
    async with api.durapay() as durapay:
        await durapay.payment_intents.create(amount_in_cents=1, currency="usd")
        await durapay.payment_intents.create(amount_in_cents=1, currency="usd")
        await durapay.payment_intents.create(
            amount_in_cents=1, currency="usd", idempotency_key="order-1234"
        )
        await durapay.payment_intents.retrieve("pi_1")
    first, second, given, get = api.header("Idempotency-Key")
    assert first and second and first != second
    assert given == "order-1234"
    assert get is None  # only POSTs carry one


async def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    api = FakeApi(error(503, "api_error", "service_unavailable", {"Retry-After": "1"}))
    with pytest.raises(APIError) as raised:
        await create(api, max_retries=3)
    assert len(api.requests) == 4  # the first attempt and 3 retries
    assert raised.value.code == "service_unavailable" and raised.value.http_status == 503
    assert raised.value.idempotency_key == api.header("Idempotency-Key")[0]
    assert all(s >= 1 for s in api.sleeps)  # never sooner than Retry-After


async def test_connection_errors_are_retried_then_raised_as_connection_errors() -> None:
    request = httpx.Request("POST", "http://durapay.test/payment-intents")
    api = FakeApi(
        httpx.ConnectError("refused", request=request),
        httpx.RemoteProtocolError("server disconnected", request=request),
        httpx.ReadTimeout("slow", request=request),
        httpx.Response(201, json=INTENT),
    )
    assert (await create(api, max_retries=3)).id == "pi_1"
    assert len(set(api.header("Idempotency-Key"))) == 1 and len(api.requests) == 4
    api = FakeApi(httpx.ReadTimeout("slow", request=request))
    with pytest.raises(APIConnectionError) as raised:
        await create(api, max_retries=2)
    assert len(api.requests) == 3
    assert raised.value.idempotency_key == api.header("Idempotency-Key")[0]


async def test_429_waits_for_retry_after_in_seconds_or_as_a_date() -> None:
    in_four_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    api = FakeApi(
        error(429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "3"}),
        error(429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": in_four_seconds}),
        httpx.Response(201, json=INTENT),
    )
    await create(api, initial_delay=0.01)
    assert len(api.requests) == 3
    assert api.sleeps[0] == 3
    assert 2.0 <= api.sleeps[1] <= 4.0  # the date is whole seconds, and time passes


async def test_a_retry_after_past_the_cap_is_raised_at_once() -> None:
    api = FakeApi(error(429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "600"}))
    with pytest.raises(RateLimitError) as raised:
        await create(api, max_retry_after=60)
    assert len(api.requests) == 1 and api.sleeps == []
    assert raised.value.retry_after == 600


@pytest.mark.parametrize(
    ("answer", "exception"),
    [
        (error(400, "invalid_request_error", "parameter_invalid"), InvalidRequestError),
        (error(404, "not_found", "resource_missing"), NotFoundError),
        (error(409, "conflict", "payment_intent_unexpected_state"), ConflictError),
    ],
)
async def test_other_4xx_are_never_retried(
    answer: httpx.Response, exception: type[Exception]
) -> None:
    api = FakeApi(answer)
    with pytest.raises(exception):
        await create(api)
    assert len(api.requests) == 1 and api.sleeps == []


@pytest.mark.parametrize("code", ["idempotency_key_in_use", "attempt_in_flight"])
async def test_a_409_of_a_request_still_running_is_retried(code: str) -> None:
    api = FakeApi(error(409, "conflict", code), httpx.Response(201, json=INTENT))
    assert (await create(api)).id == "pi_1"
    assert len(api.requests) == 2 and len(set(api.header("Idempotency-Key"))) == 1


async def test_key_in_use_after_the_retries_names_the_key_to_retry_with() -> None:
    api = FakeApi(error(409, "conflict", "idempotency_key_in_use"))
    with pytest.raises(IdempotencyKeyInUseError) as raised:
        await create(api, max_retries=1)
    assert raised.value.idempotency_key == api.header("Idempotency-Key")[0]


async def test_zero_retries_sends_once() -> None:
    api = FakeApi(error(503, "api_error", "service_unavailable"))
    with pytest.raises(APIError):
        await create(api, max_retries=0)
    assert len(api.requests) == 1


async def test_gets_are_retried_too() -> None:
    api = FakeApi(error(502, "api_error", "bad_gateway"), httpx.Response(200, json=INTENT))
    async with api.durapay() as durapay:
        assert (await durapay.payment_intents.retrieve("pi_1")).id == "pi_1"
    assert len(api.requests) == 2


async def test_a_route_without_idempotency_is_retried_only_when_nothing_was_sent() -> None:
    """The API ignores Idempotency-Key on creating a webhook endpoint: a lost answer may hide
    an endpoint that was created, so only errors before sending (and 429) are retried."""
    request = httpx.Request("POST", "http://durapay.test/webhook-endpoints")
    endpoint = {
        "id": "we_1",
        "url": "https://x",
        "enabledEvents": ["*"],
        "status": "enabled",
        "secret": "whsec_AAAA",
    }
    api = FakeApi(
        httpx.ConnectError("refused", request=request),
        error(429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "1"}),
        httpx.Response(201, json=endpoint),
    )
    async with api.durapay() as durapay:
        created = await durapay.webhook_endpoints.create(url="https://x", enabled_events=["*"])
    assert created.secret == "whsec_AAAA" and len(api.requests) == 3
    for lost in (
        httpx.RemoteProtocolError("dropped", request=request),
        error(503, "api_error", "service_unavailable"),
    ):
        api = FakeApi(lost, httpx.Response(201, json=endpoint))
        async with api.durapay() as durapay:
            with pytest.raises((APIConnectionError, APIError)):
                await durapay.webhook_endpoints.create(url="https://x", enabled_events=["*"])
        assert len(api.requests) == 1


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=4.0)
    for retry_number, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (12, 4.0)]:
        assert policy.delay(retry_number, None, random_fraction=0.0) == ceiling / 2
        assert policy.delay(retry_number, None, random_fraction=1.0) == ceiling
        assert ceiling / 2 <= policy.delay(retry_number, None) <= ceiling
    assert policy.delay(1, 7.0, random_fraction=1.0) == 7.0  # Retry-After wins when longer
    assert policy.delay(4, 0.1, random_fraction=1.0) == 4.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("-1", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
        ("nan", None),
        ("Thu, 01 Jan 2026 00:00:10 GMT", 10.0),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    value: str | None, expected: float | None
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert retry_after_seconds(value, now=lambda: now) == expected


@pytest.mark.parametrize(
    ("method", "path", "safe"),
    [
        ("POST", "/payment-intents", True),
        ("POST", "/payment-intents/pi_1/transactions", True),
        ("POST", "/payment-intents/pi_1/refunds", True),
        ("POST", "/events/evt_1/redeliver", True),
        ("POST", "/webhook-endpoints/we_1", True),
        ("GET", "/webhook-endpoints", True),
        ("DELETE", "/webhook-endpoints/we_1", True),
        ("POST", "/webhook-endpoints", False),
        ("post", "/webhook-endpoints/", False),
        ("POST", "/webhook-endpoints?x=1", False),
        ("POST", "/webhook-endpoints/we_1/rotate-secret", False),
        ("POST", "/merchants", False),
        ("POST", "/merchants/mer_1/keys/roll", False),
    ],
)
def test_posts_the_api_does_not_dedupe_are_told_apart(method: str, path: str, safe: bool) -> None:
    assert repeats_safely(method, path) is safe


async def test_a_raw_request_is_retried_and_answered_as_it_came() -> None:
    api = FakeApi(
        error(503, "api_error", "service_unavailable"), error(402, "card_error", "card_declined")
    )
    async with api.durapay() as durapay:
        response = await durapay.request(
            "POST", "/payment-intents/pi_1/transactions", {"type": "charge"}
        )
    assert response.status_code == 402 and len(api.requests) == 2
    assert len(set(api.header("Idempotency-Key"))) == 1


async def test_a_route_without_idempotency_is_retried_after_a_503_that_did_nothing() -> None:
    """The API marks its admission control's refusals: nothing was done, so even a request it
    would not deduplicate is sent again, after the Retry-After, re-signed."""
    endpoint = {
        "id": "we_1",
        "url": "https://x",
        "enabledEvents": ["*"],
        "status": "enabled",
        "secret": "whsec_AAAA",
    }
    refused = error(
        503,
        "api_error",
        "service_unavailable",
        {"Retry-After": "1", "Durapay-Not-Processed": "true"},
    )
    api = FakeApi(refused, httpx.Response(201, json=endpoint))
    async with api.durapay() as durapay:
        created = await durapay.webhook_endpoints.create(url="https://x", enabled_events=["*"])
    assert created.secret == "whsec_AAAA" and len(api.requests) == 2
    assert api.sleeps[0] >= 1
    assert len(set(api.header("X-Nonce"))) == 2


async def test_retries_stop_once_their_waits_would_pass_the_total_budget() -> None:
    refused = error(
        503,
        "api_error",
        "service_unavailable",
        {"Retry-After": "4", "Durapay-Not-Processed": "true"},
    )
    api = FakeApi(refused)
    with pytest.raises(APIError):
        await create(api, max_retries=10, max_total_wait=10.0)
    assert api.sleeps == [4.0, 4.0]  # a third wait would reach 12 s
    assert len(api.requests) == 3
