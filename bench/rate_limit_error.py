"""`python -m bench.rate_limit_error`: what the sharded rate limit (api/rate_limit.py) grants,
against the exact token bucket it approximates, in a deterministic simulation (seeded).

The model is the statement's own arithmetic, shard by shard (refill at rate/S up to burst/S,
take one token if there is one, the time of each request its arrival), with the real shard
choice (`shard_order`). Requests arrive as a Poisson process at a share of the key's rate
(50 % … 200 %) for `--seconds` (30), its buckets full at the start (a key that was idle); the
same arrivals go to the exact bucket (S = 1) and to the sharded one. Two more columns:
`burst` offers the whole burst at one instant, where an exact bucket grants all of it; `edge`
offers twice the rate for 2 s, about all an exact bucket grants from full (its burst and 2 s of
refill), so that it refuses next to nothing while a shard that drains early refuses. Each S
runs at the lowest rate that `shards_for` gives that many shards: there each shard's burst is
smallest, which is where sharding errs most.

It prints, for each S, the share of the offered requests admitted, exact and sharded, and the
largest excess over the exact bucket's bound (burst + rate·t since the start): never above 0.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass

from api.rate_limit import FALLBACK_SHARDS, SHARD_RATE, burst_of, shard_order

LOADS = (0.5, 0.9, 1.0, 1.1, 2.0)
SHARDS = (1, 4, 16, 64)
BURST = "burst"  # the whole burst at one instant
# Twice the rate for the 2 s an exact bucket's burst lasts: about all it can grant (its burst and
# 2 s of refill), so it refuses next to nothing while any shard that drains early refuses.
EDGE = "edge"
EDGE_SECONDS = 2.0


@dataclass(frozen=True)
class Granted:
    offered: int
    admitted: int
    excess: float  # the most admitted beyond burst + rate·t (t from the start); ≤ 0

    @property
    def share(self) -> float:
        return self.admitted / self.offered


def lowest_rate_for(shards: int) -> float:
    """The lowest whole rate that `shards_for` splits into `shards` shards (one: the highest)."""
    return SHARD_RATE if shards == 1 else SHARD_RATE * (shards - 1) + 1


def poisson_arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    times, now = [], rng.expovariate(rate)
    while now < seconds:
        times.append(now)
        now += rng.expovariate(rate)
    return times


def grant(
    arrivals: Sequence[float],
    *,
    rate: float,
    shards: int,
    choice: random.Random,
    fallbacks: int = FALLBACK_SHARDS,
) -> Granted:
    """Run `arrivals` (seconds, ascending) through a key of `rate` split into `shards`."""
    shard_rate, shard_burst = rate / shards, burst_of(rate) / shards
    tokens, updated = [shard_burst] * shards, [0.0] * shards
    admitted, excess = 0, float("-inf")
    for now in arrivals:
        for shard in shard_order(shards, choice, fallbacks=fallbacks):
            level = min(shard_burst, tokens[shard] + shard_rate * (now - updated[shard]))
            updated[shard] = now
            if level >= 1:
                tokens[shard] = level - 1
                admitted += 1
                excess = max(excess, admitted - burst_of(rate) - rate * now)
                break
            tokens[shard] = level
    return Granted(len(arrivals), admitted, excess)


def compare(
    shards: int, load: float | str, *, seconds: float, seed: int, fallbacks: int = FALLBACK_SHARDS
) -> tuple[Granted, Granted]:
    """(exact, sharded) for the same arrivals at `load` (a share of the rate, BURST or EDGE)."""
    rate = lowest_rate_for(shards)
    rng = random.Random(f"{seed}/{shards}/{load}")
    if load == BURST:
        arrivals = [0.0] * int(burst_of(rate))
    elif load == EDGE:
        arrivals = poisson_arrivals(2 * rate, EDGE_SECONDS, rng)
    else:
        arrivals = poisson_arrivals(float(load) * rate, seconds, rng)
    exact = grant(arrivals, rate=rate, shards=1, choice=rng)
    return exact, grant(arrivals, rate=rate, shards=shards, choice=rng, fallbacks=fallbacks)


def label(load: float | str) -> str:
    return load if isinstance(load, str) else f"{load:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fallbacks",
        type=int,
        default=FALLBACK_SHARDS,
        help="other shards a request tries when its first is empty",
    )
    args = parser.parse_args()
    print(
        f"admitted share of offered requests, exact bucket → sharded ({args.seconds:g} s of "
        f"Poisson arrivals from full buckets; {args.fallbacks} fallback shards; seed "
        f"{args.seed})"
    )
    header = "".join(f"{label(load):>20}" for load in (*LOADS, BURST, EDGE))
    print(f"{'S':>3} {'rate/s':>7}{header}   excess")
    for shards in SHARDS:
        cells, excess = [], float("-inf")
        for load in (*LOADS, BURST, EDGE):
            exact, sharded = compare(
                shards, load, seconds=args.seconds, seed=args.seed, fallbacks=args.fallbacks
            )
            excess = max(excess, sharded.excess)
            cells.append(f"{exact.share:8.3%} → {sharded.share:8.3%}")
        print(
            f"{shards:>3} {lowest_rate_for(shards):>7g}"
            + "".join(f"{c:>20}" for c in cells)
            + f"   {excess:+.2f}"
        )


if __name__ == "__main__":
    main()
