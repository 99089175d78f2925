"""Per-key rate limit: token buckets per API key, kept in Postgres, split into shards for big keys.

Each public key may make `DURAPAY_RATE_LIMIT_PER_SECOND` requests a second on average, in
bursts of up to twice that; past it the API answers 429 `rate_limit_error` with `Retry-After`
(whole seconds until a bucket it tried holds a token again, at least 1). 0 turns the limit off.

Why Postgres: the API runs as several processes, and a bucket per process would let each of
them grant the whole budget. A bucket is a row (`rate_limit_bucket`) that one statement
refills and spends atomically, with time read from the database's clock, so every process
sees one clock and one balance. A request's first token is taken inside authentication's one
statement, right after its nonce is spent (api/authentication.py), so the limit costs no round
trip of its own; a fallback shard's token (below) by `TAKE_TOKEN` alone. Either statement runs
as its own transaction (autocommit): the row is locked only while Postgres executes it, not
across a BEGIN and a COMMIT sent from the API; the table is UNLOGGED, so its writes skip the
WAL (`make bench` and `python -m bench.rate_limit` measure the statement).

Why shards: every request of a key updates that key's row, so one row caps a key's requests at
what one row lock serialises, whichever number of API processes serve it. A key whose rate
exceeds `SHARD_RATE` is split into `shards_for(rate)` rows `(public_key, shard)`, each a bucket
of rate/S with burst/S; a request takes a token from one shard picked at random and, if that
one is empty, from at most `FALLBACK_SHARDS` others before it is refused. Each shard sees at
most ~`SHARD_RATE` requests a second (`MAX_SHARDS` caps S: past `MAX_SHARDS * SHARD_RATE` the
shards see more), and a key at or under `SHARD_RATE`, the default 100 included, keeps one row
and the exact bucket.

What sharding costs: the shards together never grant more than the exact bucket would (each
shard grants at most burst/S + t·rate/S over any t seconds, so all of them burst + t·rate),
but a request can find its shards empty while others still hold tokens, so a key close to its
limit is refused a little earlier than with one bucket. `python -m bench.rate_limit_error`
simulates it; docs/operations.md ("Abuse limits") has its table and bounds. A refused request
of a sharded key costs up to 1 + `FALLBACK_SHARDS` statements. Retry-After stays right: a
sharded key's shards each refill at over `SHARD_RATE / 2` tokens a second, so every shard holds
a token again within the 1 second it says.

A change of the rate takes effect at each shard's next use (its tokens are capped at the new
burst/S); rows of shards past a new, smaller S are no longer read.

Only requests whose signature verified are charged, to the key that signed them: someone who
knows a public key (it travels in every request) must not be able to spend its merchant's
budget, and requests that fail authentication create no row, so the table holds at most S rows
per key that ever authenticated. Floods of unauthenticated requests cost one key lookup each
and are best limited per client address in front of the API (a proxy or load balancer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import RateLimitError
from core.settings import Settings

# Requests a second one shard is sized for: a row lock held for one statement's execution
# serialises thousands a second, so this leaves it far from queueing; and it keeps each
# shard's burst (2 s of its rate) at 200 tokens or more, which is what keeps the random
# choice's refusals negligible under the limit (docs/operations.md).
SHARD_RATE = 200.0
MAX_SHARDS = 64
# Other shards a request tries when its first one is empty. Each costs one more statement, and
# a key over its limit pays it on most requests; a second fallback would win back only a
# fraction of a percent of an instant full burst (docs/operations.md).
FALLBACK_SHARDS = 1

# The tokens a bucket holds at `excluded.updated_at` (the clock read once, in the inserted row),
# capped at the burst. greatest(0, …): a request that waited for the row lock may carry an earlier
# time than the one its predecessor stored; it then refills nothing rather than a negative amount.
_REFILLED = (
    "least(CAST(:burst AS float8), bucket.tokens + CAST(:rate AS float8) * greatest("
    "0, extract(epoch FROM excluded.updated_at - bucket.updated_at)::float8))"
)
# Refill and spend an existing bucket: the tail of every statement that takes a token, whether on
# its own (`TAKE_TOKEN`) or inside authentication's one statement (api/authentication.py).
SPEND_FROM_BUCKET = f"""ON CONFLICT (public_key, shard) DO UPDATE SET
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    allowed = {_REFILLED} >= 1,
    updated_at = greatest(bucket.updated_at, excluded.updated_at)
RETURNING allowed, tokens"""
TAKE_TOKEN = text(f"""
INSERT INTO rate_limit_bucket AS bucket (public_key, shard, tokens, allowed, updated_at)
VALUES (:public_key, :shard, CAST(:burst AS float8) - 1, true, clock_timestamp())
{SPEND_FROM_BUCKET}
""")

# Which shard serves a request is no secret and needs no strength: a client that could steer it
# would only confine itself to fewer shards.
_CHOICE = random.Random()


def burst_of(rate: float) -> float:
    """Twice the rate, and at least one request, or a slow rate would refuse everything."""
    return max(1.0, 2 * rate)


def shards_for(rate: float) -> int:
    """How many buckets a key of `rate` requests a second is split into."""
    return min(MAX_SHARDS, max(1, math.ceil(rate / SHARD_RATE)))


def shard_order(
    shards: int, choice: random.Random, *, fallbacks: int = FALLBACK_SHARDS
) -> list[int]:
    """The shards one request tries, in order: one at random, then up to `fallbacks` others."""
    return choice.sample(range(shards), min(shards, 1 + fallbacks))


@dataclass(frozen=True)
class TokenRequest:
    """The buckets one request of a key tries, in order, and each one's rate and burst."""

    rate: float
    shards: list[int]
    shard_rate: float
    shard_burst: float

    def parameters(self, shard: int) -> dict[str, float | int]:
        return {"shard": shard, "rate": self.shard_rate, "burst": self.shard_burst}


def token_request(settings: Settings) -> TokenRequest | None:
    """What one request takes from its key's buckets; None when the limit is off."""
    rate = settings.rate_limit_per_second
    if rate <= 0:
        return None
    shards = shards_for(rate)
    return TokenRequest(
        rate=rate,
        shards=shard_order(shards, _CHOICE),
        shard_rate=rate / shards,
        shard_burst=burst_of(rate) / shards,
    )


async def take_token(session: AsyncSession, settings: Settings, public_key: str) -> None:
    """Spend one of `public_key`'s tokens, or raise 429 with the wait until the next one.

    Call it with no transaction open on `session`: its statements commit one by one."""
    wanted = token_request(settings)
    if wanted is None:
        return
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    try:
        await take_from_shards(connection, wanted, public_key, wanted.shards, waits=[])
    finally:
        await session.commit()  # nothing left to commit: it hands the connection back


async def take_from_shards(
    connection: AsyncConnection,
    wanted: TokenRequest,
    public_key: str,
    shards: list[int],
    *,
    waits: list[float],
) -> None:
    """Take a token from the first of `shards` that holds one, each in its own autocommit
    statement; RateLimitError if none does. `waits`: the seconds until a token of each shard
    already found empty (authentication's statement tries the first shard itself)."""
    for shard in shards:
        row = (
            await connection.execute(
                TAKE_TOKEN, {"public_key": public_key, **wanted.parameters(shard)}
            )
        ).one()
        if row.allowed:
            return
        waits.append(seconds_until_token(wanted, row.tokens))
    raise rate_limited(wanted, waits)


def seconds_until_token(wanted: TokenRequest, tokens: float) -> float:
    return (1 - tokens) / wanted.shard_rate


def rate_limited(wanted: TokenRequest, waits: list[float]) -> RateLimitError:
    rate = wanted.rate
    return RateLimitError(
        "rate_limit_exceeded",
        f"Too many requests with this API key: at most {rate:g} a second on average, in "
        f"bursts of {burst_of(rate):g}. Retry after the delay in Retry-After (seconds).",
        headers={"Retry-After": str(max(1, math.ceil(min(waits))))},
    )
