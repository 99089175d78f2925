"""What the per-key rate limiter (api/rate_limit.py) adds to every signed request: its
statement timed back to back on the stack's database beside a bare `SELECT 1`, and its share
of a signed retrieve (a step of `make bench`; `python -m bench.rate_limit` measures it under
contention)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import text

from api.rate_limit import take_token
from bench.cpu import CpuUse, snapshot
from bench.measurement import Measurement, ratio
from bench.stack import stack_processes
from core.db.session import create_engine, session_factory
from core.settings import Settings, to_asyncpg_url
from tests.stack import RunningStack


@dataclass
class Timed:
    ms: float  # wall time per statement (its own transaction), one after the other
    cpu: CpuUse  # `postgres`, and `bench`: the client side, which the API pays in production


async def measure_rate_limiter(stack: RunningStack, count: int = 1000) -> dict[str, Timed]:
    """What the rate limit adds to every signed request: `take_token` itself (one upsert, as
    its own transaction) on one connection of the stack's database, beside `SELECT 1` as its
    own transaction, in alternating rounds so that drift in the machine's load hits both
    alike."""
    engine = create_engine(to_asyncpg_url(stack.database_url), pool_size=1)
    settings = Settings(rate_limit_per_second=1e9)  # the limiter's full work, never a refusal
    postgres = {"postgres": stack_processes(stack)["postgres"]}
    rounds, per_round = 10, count // 10
    wall = {"take_token": 0.0, "SELECT 1": 0.0}
    cpu: dict[str, dict[str, float]] = {name: {} for name in wall}
    try:
        async with session_factory(engine)() as session:

            async def limiter() -> None:
                await take_token(session, settings, "pk_bench_rate_limiter")

            async def select_one() -> None:
                connection = await session.connection(
                    execution_options={"isolation_level": "AUTOCOMMIT"}
                )
                await connection.execute(text("SELECT 1"))
                await session.commit()

            steps = {"take_token": limiter, "SELECT 1": select_one}
            for step in steps.values():  # connection, prepared statements, the key's bucket rows
                for _ in range(50):
                    await step()
            for _ in range(rounds):
                for name, step in steps.items():
                    before, started = snapshot(postgres), time.perf_counter()
                    for _ in range(per_round):
                        await step()
                    wall[name] += time.perf_counter() - started
                    for process, seconds in snapshot(postgres).items():
                        cpu[name][process] = cpu[name].get(process, 0.0) + seconds - before[process]
    finally:
        await engine.dispose()
    done = rounds * per_round
    return {
        name: Timed(1000 * wall[name] / done, CpuUse(cpu[name], done, wall[name])) for name in wall
    }


def print_rate_limiter(timed: dict[str, Timed], retrieve: Measurement) -> None:
    limiter, floor = timed["take_token"], timed["SELECT 1"]
    print(
        "\nrate limiter (api/rate_limit.py), per signed request: one upsert (autocommit) on "
        "one of the key's bucket rows (UNLOGGED)"
    )
    for name, measured in timed.items():
        cpu = measured.cpu.per_operation_ms()
        print(
            f"  {name:<20} {measured.ms:6.3f} ms"
            f"   cpu postgres {cpu.get('postgres', 0):.3f} ms  client {cpu.get('bench', 0):.3f}"
            " ms"
        )
    print(f"  over a bare round trip             {limiter.ms - floor.ms:6.3f} ms")
    if retrieve.latencies:
        print(
            f"  share of a signed retrieve p50     {ratio(limiter.ms, retrieve.p50 * 1000):6.1%}"
            f"   ({retrieve.p50 * 1000:.1f} ms at concurrency, the limiter included)"
        )
    if retrieve.cpu:
        print(
            f"  share of a signed retrieve's cpu   "
            f"{ratio(limiter.cpu.total_ms, retrieve.cpu.total_ms):6.1%}"
            f"   ({retrieve.cpu.total_ms:.1f} ms all processes, the limiter included)"
        )
