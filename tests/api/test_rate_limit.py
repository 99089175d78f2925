"""api/rate_limit.py: token buckets per API key, in Postgres, shared by every API process; one
bucket for a key at the default rate, shards for a key of many requests a second.

The buckets refill with time, so these tests stop time where they need an exact count: they
move a bucket's `updated_at` an hour ahead (nothing refills until the clock gets there) or
back (it refills as if that long had passed).
"""

from __future__ import annotations

import random

import asyncpg
import httpx
import pytest

from api import rate_limit
from api.rate_limit import burst_of, shards_for
from client import sign
from core.settings import Settings
from tests.api.app_instances import app_instance, through
from tests.api.conftest import Merchant, count, onboard

pytestmark = pytest.mark.api


async def _bucket(db: asyncpg.Pool, merchant: Merchant) -> asyncpg.Record | None:
    """The key's one bucket (a key of a rate up to 200 a second has only shard 0)."""
    rows = await db.fetch(
        "SELECT * FROM rate_limit_bucket WHERE public_key = $1", merchant.public_key
    )
    assert [row["shard"] for row in rows] in ([], [0])
    return rows[0] if rows else None


async def _stop_refilling(db: asyncpg.Pool, merchant: Merchant) -> None:
    await db.execute(
        "UPDATE rate_limit_bucket SET updated_at = clock_timestamp() + "
        "interval '1 hour' WHERE public_key = $1",
        merchant.public_key,
    )


async def _set_bucket(
    db: asyncpg.Pool, merchant: Merchant, *, tokens: float, seconds_ago: float
) -> None:
    await db.execute(
        "UPDATE rate_limit_bucket SET tokens = $2, updated_at = clock_timestamp() "
        "- make_interval(secs => $3) WHERE public_key = $1",
        merchant.public_key,
        tokens,
        seconds_ago,
    )


async def _frozen_shards(
    db: asyncpg.Pool, merchant: Merchant, *, shards: int, tokens: float
) -> None:
    """Every shard of the key holding `tokens`, none refilling."""
    await db.executemany(
        "INSERT INTO rate_limit_bucket (public_key, shard, tokens, allowed, updated_at) "
        "VALUES ($1, $2, $3, true, clock_timestamp() + interval '1 hour')",
        [(merchant.public_key, shard, tokens) for shard in range(shards)],
    )


def _assert_rate_limited(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "error": {
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "message": response.json()["error"]["message"],
            "param": None,
        }
    }
    assert response.headers["Retry-After"] == str(retry_after)


def test_the_default_is_100_a_second_in_bursts_of_200_in_one_bucket() -> None:
    rate = Settings.model_fields["rate_limit_per_second"].default
    assert (rate, burst_of(rate), shards_for(rate)) == (100, 200, 1)


async def test_a_key_gets_a_burst_of_twice_the_rate_then_429(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant = await onboard(http)
    async with app_instance(settings, rate_limit_per_second=3) as limited:
        shop = through(limited, merchant)
        await shop.create_intent()
        bucket = await _bucket(db, merchant)
        assert bucket is not None and bucket["tokens"] == 5 and bucket["allowed"]
        await _stop_refilling(db, merchant)
        for _ in range(5):
            await shop.create_intent()
        refused = await shop.post("/payment-intents", {"amountInCents": 100, "currency": "usd"})
        _assert_rate_limited(refused, retry_after=1)  # a token every 1/3 s
        assert await count(db, "payment_intent", merchant) == 6
        # A refused request spends nothing: the bucket is still empty, not in debt.
        bucket = await _bucket(db, merchant)
        assert bucket is not None and bucket["tokens"] == 0 and not bucket["allowed"]
        # Every request of the key counts, reads included.
        _assert_rate_limited(await shop.get("/payment-intents"), retry_after=1)


async def test_retry_after_is_the_whole_seconds_until_the_next_token(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant = await onboard(http)
    # A token every 4 s; the burst is never below one request.
    async with app_instance(settings, rate_limit_per_second=0.25) as limited:
        shop = through(limited, merchant)
        assert (await shop.get("/payment-intents")).status_code == 200
        await _stop_refilling(db, merchant)
        _assert_rate_limited(await shop.get("/payment-intents"), retry_after=4)
        await _set_bucket(db, merchant, tokens=0.5, seconds_ago=0)
        await _stop_refilling(db, merchant)
        _assert_rate_limited(await shop.get("/payment-intents"), retry_after=2)


async def test_a_bucket_refills_at_the_rate_up_to_the_burst(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant = await onboard(http)
    async with app_instance(settings, rate_limit_per_second=3) as limited:
        shop = through(limited, merchant)
        assert (await shop.get("/payment-intents")).status_code == 200
        await _set_bucket(db, merchant, tokens=0, seconds_ago=3600)
        assert (await shop.get("/payment-intents")).status_code == 200
        bucket = await _bucket(db, merchant)
        assert bucket is not None and bucket["tokens"] == 5  # full (6), less this request
        await _set_bucket(db, merchant, tokens=0, seconds_ago=1)
        assert (await shop.get("/payment-intents")).status_code == 200
        bucket = await _bucket(db, merchant)
        # 3 tokens for the second, less this request, plus what the request's own time added.
        assert bucket is not None and 2 <= bucket["tokens"] < 2.9


async def test_two_api_instances_share_one_bucket(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Two apps with their own engines and pools, as two API processes have: a burst of 2 is 2
    requests in all, not 2 per process."""
    merchant = await onboard(http)
    async with (
        app_instance(settings, rate_limit_per_second=1) as first,
        app_instance(settings, rate_limit_per_second=1) as second,
    ):
        on_first, on_second = through(first, merchant), through(second, merchant)
        assert (await on_first.get("/payment-intents")).status_code == 200
        await _stop_refilling(db, merchant)
        assert (await on_second.get("/payment-intents")).status_code == 200
        _assert_rate_limited(await on_first.get("/payment-intents"), retry_after=1)
        _assert_rate_limited(await on_second.get("/payment-intents"), retry_after=1)


async def test_keys_have_buckets_of_their_own(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant, other = await onboard(http), await onboard(http)
    async with app_instance(settings, rate_limit_per_second=0.5) as limited:
        assert (await through(limited, merchant).get("/payment-intents")).status_code == 200
        await _stop_refilling(db, merchant)
        _assert_rate_limited(await through(limited, merchant).get("/payment-intents"), 2)
        assert (await through(limited, other).get("/payment-intents")).status_code == 200


async def test_requests_that_fail_authentication_spend_nothing_and_store_nothing(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant = await onboard(http)
    forged = Merchant(http, merchant.id, merchant.public_key, "sk_test_" + "0" * 32)
    unknown = Merchant(http, merchant.id, "pk_test_" + "0" * 32, merchant.secret_key)
    async with app_instance(settings, rate_limit_per_second=0.5) as limited:
        for impostor in (forged, unknown):
            for _ in range(3):
                response = await through(limited, impostor).get("/payment-intents")
                assert response.status_code == 401, response.text
        assert (
            await db.fetchval(
                "SELECT count(*) FROM rate_limit_bucket WHERE public_key = ANY($1::varchar[])",
                [merchant.public_key, unknown.public_key],
            )
            == 0
        )
        # The merchant's own burst (one request) is still there.
        assert (await through(limited, merchant).get("/payment-intents")).status_code == 200


async def test_a_rate_of_zero_turns_the_limit_off(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    merchant = await onboard(http)
    async with app_instance(settings, rate_limit_per_second=0) as unlimited:
        for _ in range(3):
            assert (await through(unlimited, merchant).get("/payment-intents")).status_code == 200
    assert await _bucket(db, merchant) is None


async def test_a_request_refused_for_its_rate_still_spends_its_nonce(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """The same signed bytes sent again once the bucket refilled are a replay, not a request
    that now succeeds."""
    merchant = await onboard(http)
    async with app_instance(settings, rate_limit_per_second=0.5) as limited:
        assert (await through(limited, merchant).get("/payment-intents")).status_code == 200
        await _stop_refilling(db, merchant)
        request = limited.build_request("GET", "/payment-intents")
        sign(request, public_key=merchant.public_key, secret_key=merchant.secret_key)
        _assert_rate_limited(await limited.send(request), retry_after=2)
        await _set_bucket(db, merchant, tokens=1, seconds_ago=0)  # as if Retry-After passed
        resent = await limited.send(request)
        assert resent.status_code == 401, resent.text
        assert resent.json()["error"]["code"] == "replayed_nonce"
        # The bucket still holds its tokens: the replay was refused before the rate limit.
        assert (await through(limited, merchant).get("/payment-intents")).status_code == 200


async def test_a_large_keys_requests_are_spread_over_its_shards(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 a second: 50 rows of 200 a second each, one taken per request (one lock each)."""
    merchant = await onboard(http)
    assert shards_for(10_000) == 50
    await _frozen_shards(db, merchant, shards=50, tokens=10)
    monkeypatch.setattr(rate_limit, "_CHOICE", random.Random(11))
    async with app_instance(settings, rate_limit_per_second=10_000) as limited:
        shop = through(limited, merchant)
        for _ in range(60):
            assert (await shop.get("/payment-intents")).status_code == 200
    rows = await db.fetch(
        "SELECT shard, tokens FROM rate_limit_bucket WHERE public_key = $1", merchant.public_key
    )
    assert sorted(row["shard"] for row in rows) == list(range(50))  # no row past the 50
    assert sum(10 - row["tokens"] for row in rows) == 60  # each request took one token
    assert sum(row["tokens"] < 10 for row in rows) >= 25  # from many shards


async def test_two_api_instances_share_a_sharded_keys_budget(
    settings: Settings, http: httpx.AsyncClient, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 a second is 5 shards; with 4 tokens in each and no refill, two API processes
    admit 20 requests in all (40 if each had buckets of its own), then both answer 429 with
    Retry-After 1 (a shard of 200 a second has a token again within it)."""
    merchant = await onboard(http)
    await _frozen_shards(db, merchant, shards=5, tokens=4)
    monkeypatch.setattr(rate_limit, "_CHOICE", random.Random(7))
    async with (
        app_instance(settings, rate_limit_per_second=1000) as first,
        app_instance(settings, rate_limit_per_second=1000) as second,
    ):
        shops = [through(first, merchant), through(second, merchant)]
        admitted = {0: 0, 1: 0}
        for sent in range(200):  # until every token is spent: a request sees 2 of 5 shards
            response = await shops[sent % 2].get("/payment-intents")
            if response.status_code == 200:
                admitted[sent % 2] += 1
            else:
                _assert_rate_limited(response, retry_after=1)
            if sum(admitted.values()) == 20:
                break
        assert sum(admitted.values()) == 20 and min(admitted.values()) > 0
        assert (
            await db.fetchval(
                "SELECT sum(tokens) FROM rate_limit_bucket WHERE public_key = $1",
                merchant.public_key,
            )
            == 0
        )
        for shop in shops:
            _assert_rate_limited(await shop.get("/payment-intents"), retry_after=1)
