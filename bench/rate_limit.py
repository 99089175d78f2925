"""`python -m bench.rate_limit`: how many tokens a second ONE API key's rate limit grants when
32 requests of that key take them at once, before and after its bucket was sharded.

It starts a scratch PostgreSQL (tests/scratch_postgres.py: the embedded binaries on a free port,
migrated, stopped at the end) and runs, closed loop for `--seconds` per round (every task takes
its next token as soon as it got the last), `--tasks` concurrent tasks (32), each with its own
session on an engine built as the API builds it (core/db/session.py), for one key whose limit
(`--rate`, 10,000 a second) is far above what they ask, so nothing is refused:
  before      the previous limiter: one row per key, its upsert between a BEGIN and a COMMIT
              sent by the client (the row stays locked across the COMMIT's round trip), on a
              table of the previous shape that the bench creates;
  one row     the same statement on one row, as its own transaction (autocommit): what the
              shorter lock alone gives;
  after       the real `take_token` (api/rate_limit.py): the key's shards, one autocommit
              statement per request;
  SELECT 1    a bare `SELECT 1` as its own transaction: what this client process can do at all
              with one round trip per operation, the ceiling of the others.
Rounds alternate the variants, so drift in the machine's load hits them alike. It prints each
variant's tokens a second, how many of the tasks' sessions wait on a lock on average (sampled
from pg_stat_activity every 10 ms), the ratio after / before, and how many shards the key used.

All tasks share one process and one event loop, as the requests of one API process do: with
many API processes (and cores) the before variant stays capped by its row lock while the others
grow, so the ratio here is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import RateLimitError
from api.rate_limit import burst_of, shards_for, take_token
from core.db.session import create_engine, session_factory
from core.settings import Settings, to_asyncpg_url
from tests.scratch_postgres import scratch_postgres

AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}
ONE_ROW_TABLE = """
CREATE UNLOGGED TABLE rate_limit_bucket_one_row (
    public_key VARCHAR PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    allowed BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)"""
_REFILLED = (
    "least(CAST(:burst AS float8), bucket.tokens + CAST(:rate AS float8) * greatest("
    "0, extract(epoch FROM excluded.updated_at - bucket.updated_at)::float8))"
)
ONE_ROW_TAKE = text(f"""
INSERT INTO rate_limit_bucket_one_row AS bucket (public_key, tokens, allowed, updated_at)
VALUES (:public_key, CAST(:burst AS float8) - 1, true, clock_timestamp())
ON CONFLICT (public_key) DO UPDATE SET
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    allowed = {_REFILLED} >= 1,
    updated_at = greatest(bucket.updated_at, excluded.updated_at)
RETURNING allowed, tokens
""")
SELECT_ONE = text("SELECT 1")

Take = Callable[[AsyncSession], Awaitable[bool]]  # whether a token was granted


def variants(rate: float) -> dict[str, Take]:
    settings = Settings(rate_limit_per_second=rate)
    params = {"rate": rate, "burst": burst_of(rate)}

    async def before(session: AsyncSession) -> bool:
        connection = await session.connection()
        row = (await connection.execute(ONE_ROW_TAKE, {"public_key": "pk_before", **params})).one()
        await session.commit()
        return bool(row.allowed)

    async def one_row(session: AsyncSession) -> bool:
        connection = await session.connection(execution_options=AUTOCOMMIT)
        row = (await connection.execute(ONE_ROW_TAKE, {"public_key": "pk_one_row", **params})).one()
        await session.commit()
        return bool(row.allowed)

    async def after(session: AsyncSession) -> bool:
        try:
            await take_token(session, settings, "pk_after")
        except RateLimitError:
            return False
        return True

    async def select_one(session: AsyncSession) -> bool:
        connection = await session.connection(execution_options=AUTOCOMMIT)
        await connection.execute(SELECT_ONE)
        await session.commit()
        return True

    return {"before": before, "one row": one_row, "after": after, "SELECT 1": select_one}


@dataclass
class Totals:
    granted: int = 0
    refused: int = 0
    seconds: float = 0.0
    lock_waits: list[int] = field(default_factory=list)  # sessions waiting on a lock, sampled

    @property
    def per_second(self) -> float:
        return self.granted / self.seconds

    @property
    def waiting(self) -> float:
        return statistics.mean(self.lock_waits) if self.lock_waits else 0.0


async def closed_loop(
    sessions: list[AsyncSession],
    take: Take,
    seconds: float,
    totals: Totals,
    admin: asyncpg.Connection | None = None,
) -> None:
    """Every session taking tokens back to back for `seconds`; with `admin`, how many of
    them wait on a lock (the row's), sampled every 10 ms from pg_stat_activity."""
    started = time.perf_counter()
    deadline = started + seconds

    async def task(session: AsyncSession) -> None:
        while time.perf_counter() < deadline:
            if await take(session):
                totals.granted += 1
            else:
                totals.refused += 1

    async def sample_lock_waits(connection: asyncpg.Connection) -> None:
        while time.perf_counter() < deadline:
            totals.lock_waits.append(
                await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )
            await asyncio.sleep(0.01)

    samplers = [sample_lock_waits(admin)] if admin is not None else []
    await asyncio.gather(*(task(session) for session in sessions), *samplers)
    totals.seconds += time.perf_counter() - started


async def bench(*, tasks: int, seconds: float, rounds: int, rate: float) -> None:
    async with scratch_postgres() as url:
        admin = await asyncpg.connect(url)
        await admin.execute(ONE_ROW_TABLE)
        engine = create_engine(to_asyncpg_url(url), pool_size=tasks)
        takes = variants(rate)
        totals = {name: Totals() for name in takes}
        try:
            sessions = [session_factory(engine)() for _ in range(tasks)]
            for take in takes.values():  # connections, prepared statements, the rows
                await closed_loop(sessions, take, 0.3, Totals())
            for _ in range(rounds):
                for name, take in takes.items():
                    await closed_loop(sessions, take, seconds, totals[name], admin)
            for session in sessions:
                await session.close()
            shards_used = await admin.fetchval(
                "SELECT count(*) FROM rate_limit_bucket WHERE public_key = 'pk_after'"
            )
        finally:
            await engine.dispose()
            await admin.close()
    print(
        f"one key at {rate:g} requests/s ({shards_for(rate)} shards), {tasks} concurrent "
        f"tasks, {rounds} rounds of {seconds:g} s per variant"
    )
    for name, total in totals.items():
        print(
            f"  {name:<10} {total.per_second:8.0f} tokens/s   {total.waiting:5.1f} of {tasks} "
            f"waiting on a lock   ({total.granted} granted, {total.refused} refused)"
        )
    before, after = totals["before"].per_second, totals["after"].per_second
    print(f"  after / before      {after / before:5.2f}×")
    print(f"  one row / before    {totals['one row'].per_second / before:5.2f}×")
    print(f"  after / SELECT 1    {after / totals['SELECT 1'].per_second:5.2f}")
    print(f"  shards the key used: {shards_used} of {shards_for(rate)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=10_000.0, help="the key's limit, requests a second"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(bench(tasks=args.tasks, seconds=args.seconds, rounds=args.rounds, rate=args.rate))
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
