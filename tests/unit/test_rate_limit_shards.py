"""The sharded rate limit's pure parts (api/rate_limit.py): how many shards a rate gets, which
shards a request tries, and, through the simulation in bench/rate_limit_error.py (seeded), that
the shards never grant more than the exact bucket and hardly refuse a key under its limit."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from api.rate_limit import FALLBACK_SHARDS, MAX_SHARDS, shard_order, shards_for
from bench.rate_limit_error import BURST, EDGE, compare, grant


@pytest.mark.parametrize(
    ("rate", "shards"),
    [(0.25, 1), (100, 1), (200, 1), (201, 2), (10_000, 50), (12_800, 64), (1e9, MAX_SHARDS)],
)
def test_a_key_gets_a_shard_per_200_requests_a_second_up_to_64(rate: float, shards: int) -> None:
    assert shards_for(rate) == shards


def test_a_request_tries_distinct_shards_the_first_at_random() -> None:
    choice = random.Random(3)
    assert shard_order(1, choice) == [0]  # one bucket: nothing to fall back to
    orders = [shard_order(64, choice) for _ in range(64_000)]
    assert {len(order) for order in orders} == {1 + FALLBACK_SHARDS}
    assert all(len(set(order)) == len(order) for order in orders)
    first = Counter(order[0] for order in orders)
    assert set(first) == set(range(64)) and max(first.values()) < 1.2 * min(first.values())


def test_the_model_is_the_statements_token_bucket() -> None:
    """Rate 2, burst 4: four at once, then one a half second."""
    granted = grant([0, 0, 0, 0, 0, 0.25, 0.5, 1.0, 1.0], rate=2, shards=1, choice=random.Random(0))
    assert granted.admitted == 6


@pytest.mark.parametrize("shards", [4, 16, 64])
@pytest.mark.parametrize("load", [1.1, 2.0, BURST, EDGE])
def test_shards_never_grant_more_than_the_exact_bucket_allows(
    shards: int, load: float | str
) -> None:
    exact, sharded = compare(shards, load, seconds=3, seed=5)
    assert exact.excess <= 1e-6 and sharded.excess <= 1e-6  # burst + rate·t since the start
    # And they lose little: at most 1.5 % of the offered requests (docs/operations.md).
    assert sharded.share >= exact.share - 0.015


@pytest.mark.parametrize("shards", [4, 16, 64])
def test_a_sharded_key_under_its_limit_is_not_refused(shards: int) -> None:
    exact, sharded = compare(shards, 0.9, seconds=3, seed=5)
    assert exact.share == sharded.share == 1.0
