"""Per-key rate limit: a token bucket per API key, kept in Postgres.

Each public key may make `DURAPAY_RATE_LIMIT_PER_SECOND` requests a second on average, in
bursts of up to twice that; past it the API answers 429 `rate_limit_error` with `Retry-After`
(whole seconds until the bucket holds a token again, at least 1). 0 turns the limit off.

Why Postgres: the API runs as several processes, and a bucket per process would let each of
them grant the whole budget. The bucket is one row (`rate_limit_bucket`) that one statement
refills and spends atomically, with time read from the database's clock, so every process
sees one clock and one balance. Its cost per request is that statement plus its commit; the
table is UNLOGGED, so that commit waits for no disk flush (`make bench` measures it).

Only requests whose signature verified are charged, to the key that signed them: someone who
knows a public key (it travels in every request) must not be able to spend its merchant's
budget, and requests that fail authentication create no row, so the table holds one row per
key that ever authenticated. Floods of unauthenticated requests cost one key lookup each
and are best limited per client address in front of the API (a proxy or load balancer).
"""

from __future__ import annotations

import math

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import RateLimitError
from core.settings import Settings

# The tokens a bucket holds at `excluded.updated_at` (the clock read once, in VALUES), capped at
# the burst. greatest(0, …): a request that waited for the row lock may carry an earlier time
# than the one its predecessor stored; it then refills nothing rather than a negative amount.
_REFILLED = ("least(CAST(:burst AS float8), bucket.tokens + CAST(:rate AS float8) * greatest("
             "0, extract(epoch FROM excluded.updated_at - bucket.updated_at)::float8))")
TAKE_TOKEN = text(f"""
INSERT INTO rate_limit_bucket AS bucket (public_key, tokens, allowed, updated_at)
VALUES (:public_key, CAST(:burst AS float8) - 1, true, clock_timestamp())
ON CONFLICT (public_key) DO UPDATE SET
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    allowed = {_REFILLED} >= 1,
    updated_at = greatest(bucket.updated_at, excluded.updated_at)
RETURNING allowed, tokens
""")


def burst_of(rate: float) -> float:
    """Twice the rate, and at least one request, or a slow rate would refuse everything."""
    return max(1.0, 2 * rate)


async def take_token(session: AsyncSession, settings: Settings, public_key: str) -> None:
    """Spend one of `public_key`'s tokens, or raise 429 with the wait until the next one."""
    rate = settings.rate_limit_per_second
    if rate <= 0:
        return
    row = (await session.exec(TAKE_TOKEN, params={  # type: ignore[call-overload]
        "public_key": public_key, "rate": rate, "burst": burst_of(rate)})).one()
    # Now, not with the request's later writes: the row stays locked until this commit, and
    # every request of the key waits on that lock.
    await session.commit()
    if not row.allowed:
        retry_after = max(1, math.ceil((1 - row.tokens) / rate))
        raise RateLimitError(
            "rate_limit_exceeded",
            f"Too many requests with this API key: at most {rate:g} a second on average, in "
            f"bursts of {burst_of(rate):g}. Retry after the delay in Retry-After (seconds).",
            headers={"Retry-After": str(retry_after)})
