"""Throttling of failed admin-token attempts, so the token cannot be guessed online.

Each client address may fail `DURAPAY_ADMIN_RATE_LIMIT_PER_MINUTE` times a minute on average
(a token bucket holding that many); all addresses together may fail ten times that (a second
bucket), which bounds a guesser spread over many addresses. While either bucket is empty,
every admin request of the address (or every admin request at all) answers 429
`rate_limit_error` with `Retry-After`, before its token is compared: a right guess and a wrong
one get the same answer. Successful requests spend nothing.

The state lives in this process's memory, not in Postgres: it holds only failures, costs
nothing on the merchants' hot path, and each API process granting its own budget multiplies
the guessing rate by the number of processes, which stays negligible next to a 32-character
random token (production refuses a shorter one: core/settings.py). Behind a proxy every
request comes from the proxy's address, so the per-address limit acts as the global one.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from api.errors import RateLimitError

# All addresses together may fail this many times the per-address budget.
GLOBAL_FACTOR = 10
# Addresses remembered at most; the least recently failing are forgotten first, so a flood
# from many addresses cannot grow the process's memory without bound.
MAX_ADDRESSES = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class AdminThrottle:
    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._by_address: OrderedDict[str, _Bucket] = OrderedDict()
        self._everyone = _Bucket(tokens=per_minute * GLOBAL_FACTOR, updated=time.monotonic())

    def check(self, address: str) -> None:
        """429 when `address`, or everyone, has no failed attempt left."""
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        wait = max(
            self._wait(self._everyone, GLOBAL_FACTOR, now),
            self._wait(self._by_address.get(address), 1, now),
        )
        if wait > 0:
            raise RateLimitError(
                "rate_limit_exceeded",
                "Too many failed admin authentications. Retry after the delay in Retry-After "
                "(seconds).",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def failed(self, address: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        bucket = self._by_address.pop(address, None) or _Bucket(self.per_minute, now)
        self._by_address[address] = bucket  # now the most recent
        while len(self._by_address) > MAX_ADDRESSES:
            self._by_address.popitem(last=False)
        for spent, factor in ((bucket, 1), (self._everyone, GLOBAL_FACTOR)):
            self._refill(spent, factor, now)
            spent.tokens = max(0.0, spent.tokens - 1)

    def _refill(self, bucket: _Bucket, factor: int, now: float) -> None:
        capacity = self.per_minute * factor
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * capacity / 60)
        bucket.updated = now

    def _wait(self, bucket: _Bucket | None, factor: int, now: float) -> float:
        """Seconds until `bucket` holds a whole token again (0 when it does)."""
        if bucket is None:
            return 0.0
        self._refill(bucket, factor, now)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) * 60 / (self.per_minute * factor)
