"""When to retry a request and how long to wait first: pure functions, no I/O.

As Stripe's libraries do: retry a connection error or timeout, any 5xx, a 429, and a 409 that
says the same request is still running; never another 4xx (the same request would fail the
same way). A POST keeps its Idempotency-Key across retries, so that it takes effect at most
once; on a route where the API ignores that key, only answers that prove nothing was done (a
429, a 503 marked `Durapay-Not-Processed: true`) are retried. Waits grow exponentially with
jitter, are never shorter than the `Retry-After` the API asked for, and add up to at most
`max_total_wait`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

# 409 codes of a request that may succeed if sent again unchanged (docs/api.md):
# `idempotency_key_in_use`, the key's first request is still running (a retry gets its
# answer); `attempt_in_flight`, another operation on the intent is in flight ("retry once it
# is settled"). `payment_intent_unexpected_state` and the like would fail again: not retried.
RETRYABLE_CONFLICT_CODES = frozenset({"idempotency_key_in_use", "attempt_in_flight"})

# POST routes where the API does not take an Idempotency-Key (it honours one on creating a
# payment intent, its operations, refunds and redeliveries): a retry after a lost answer could
# act twice (a second endpoint, a second rotation that ends the first new secret's life).
# Updating an endpoint sets values, so repeating it is harmless.
_KEYLESS_POST = re.compile(
    r"^/(?:webhook-endpoints|webhook-endpoints/[^/?]+/rotate-secret|merchants(?:/[^?]*)?)/?"
    r"(?:\?.*)?$"
)

# Errors before any byte of the request left: safe to retry even where the API does not honour
# an Idempotency-Key.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Errors that may come after the API received (and acted on) the request.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


# On a 503, the API's word that it refused the request before doing anything for it (its
# admission control: too busy right now). Such a 503, like a 429, may be retried even where
# the API ignores Idempotency-Key; any other 503 may come after part of the work.
NOT_PROCESSED_HEADER = "Durapay-Not-Processed"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    # The waits between one call's attempts add up to at most this: a retry that would wait
    # past it is not made (the last error is raised), so a call ends within about
    # (max_retries + 1) x the timeout + this, however often the API says "come back".
    max_total_wait: float = 30.0
    initial_delay: float = 0.5  # seconds before the first retry, before jitter
    max_delay: float = 5.0  # the backoff's ceiling, before jitter
    # A longer Retry-After is not waited for: the error is raised at once (with `retry_after`),
    # rather than holding the caller for minutes or retrying sooner than the API asked.
    max_retry_after: float = 60.0

    def backoff(self, retry_number: int, random_fraction: float) -> float:
        """Wait before retry number `retry_number` (1, 2, …): exponential, capped, with "equal
        jitter" (between half and all of it), so that many clients refused together do not
        come back together."""
        ceiling = min(self.initial_delay * 2 ** (retry_number - 1), self.max_delay)
        return ceiling * (0.5 + random_fraction / 2)

    def delay(
        self, retry_number: int, retry_after: float | None, *, random_fraction: float | None = None
    ) -> float:
        fraction = random.random() if random_fraction is None else random_fraction
        return max(self.backoff(retry_number, fraction), retry_after or 0.0)


def repeats_safely(method: str, path: str) -> bool:
    """Whether sending this request again after a lost answer cannot act twice: any GET or
    DELETE, and a POST on a route that honours its Idempotency-Key."""
    return method.upper() != "POST" or _KEYLESS_POST.match(path) is None


def refused_unprocessed(response: httpx.Response) -> bool:
    """A 429 (rate limit) or a 503 the API marked as refused before any work: nothing was
    done, so sending it again cannot act twice."""
    return response.status_code == 429 or (
        response.status_code == 503
        and response.headers.get(NOT_PROCESSED_HEADER, "").strip().lower() == "true"
    )


def retryable_status(status: int, error_code: str | None) -> bool:
    return (
        status >= 500 or status == 429 or (status == 409 and error_code in RETRYABLE_CONFLICT_CODES)
    )


def retry_after_seconds(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """`Retry-After` in seconds: delay-seconds or an HTTP-date (RFC 9110); None if absent or
    not understood. A date in the past is 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; a naive result means it said so oddly
            return None
        return max(0.0, when.timestamp() - now())
    return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
