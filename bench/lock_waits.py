"""`python -m bench.lock_waits` (the last step of `make bench`): how often one merchant's
busy traffic makes Postgres backends wait on a lock, on a fresh stack of its own.

One merchant sends signed create + charge (the same operation as the charges bench's step 3)
closed loop at concurrency 32, 240 of them after a warm-up, while a separate connection samples
`pg_stat_activity` every 50 ms. A sample *waits* when at least one backend of the stack's
database is waiting on a heavyweight lock (`wait_event_type = 'Lock'`: a row, a tuple, a
transaction id, an advisory lock). It prints the share of samples that wait and, from
`pg_locks`, the objects the waiting backends wanted, most waited first: a merchant-wide row that
every write of the merchant must take shows at the top.

The target: at most 10 % of the samples wait. Like every bench figure, it is only as steady as
the machine is quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.measurement import Options, measure
from bench.measurement import verdict as pass_or_fail
from bench.operations import durapay_operations
from bench.stack import running_stack, stack_processes
from cli.shutdown import exit_without_finalizing
from tests.stack import RunningStack

SAMPLE_SECONDS = 0.05
TARGET_WAITING_SHARE = 0.10
# Who waits, and on what: each waiting backend's ungranted lock, named, and the statement
# that waits (a row lock shows as a wait on the holder's transaction id: the statement says
# which row).
WAITING = """
SELECT a.pid, coalesce(l.locktype, '?') AS locktype,
       coalesce(l.relation::regclass::text, '') AS relation, coalesce(l.mode, '') AS mode,
       btrim(regexp_replace(left(a.query, 70), '\\s+', ' ', 'g')) AS statement
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.wait_event_type = 'Lock'
"""


@dataclass
class LockSamples:
    samples: int = 0
    waiting: int = 0  # samples in which at least one backend waited on a lock
    waiters: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def share(self) -> float:
        return self.waiting / self.samples if self.samples else 0.0


async def sample_lock_waits(database_url: str, stop: asyncio.Event) -> LockSamples:
    found = LockSamples()
    connection = await asyncpg.connect(database_url)
    try:
        while not stop.is_set():
            rows = await connection.fetch(WAITING)
            found.samples += 1
            if rows:
                found.waiting += 1
                found.waiters.update(
                    f"{r['locktype']} {r['relation']} {r['mode']}: {r['statement']}" for r in rows
                )
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
            except TimeoutError:
                pass
    finally:
        await connection.close()
    return found


async def one_merchant_under_load(stack: RunningStack, options: Options) -> LockSamples:
    async with durapay_operations(stack, options.concurrency) as ops:
        # Warm-up first (connection pools, worker caches), not sampled.
        await measure(
            "warm-up create + charge",
            ops.create_and_charge,
            Options(options.warmup, options.concurrency, 0, 1, False),
            stack_processes(stack),
        )
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_lock_waits(stack.database_url, stop))
        try:
            await measure(
                "create + charge, one merchant",
                ops.create_and_charge,
                Options(options.count, options.concurrency, 0, 1, False),
                stack_processes(stack),
            )
        finally:
            stop.set()
        return await sampler


def report(found: LockSamples) -> None:
    verdict = pass_or_fail(found.share <= TARGET_WAITING_SHARE)
    print(
        f"\nlock waits: {found.waiting} of {found.samples} samples every "
        f"{SAMPLE_SECONDS * 1000:.0f} ms had a backend waiting on a lock: "
        f"{found.share:.1%} (target ≤ {TARGET_WAITING_SHARE:.0%}: {verdict})"
    )
    for what, count in found.waiters.most_common(8):
        print(f"  {count:6d}  {what}")


async def run(options: Options) -> None:
    with tempfile.TemporaryDirectory(prefix="dpl") as tmp:
        async with running_stack(Path(tmp), options.workers) as stack:
            found = await one_merchant_under_load(stack, options)
    report(found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=240, help="create + charge, measured")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="Durapay worker processes")
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(run(Options(args.count, args.concurrency, args.warmup, args.workers, False)))
    print(f"\nlock-wait bench took {time.perf_counter() - started:.0f} s")
    exit_without_finalizing(0)  # Temporal clients ran here (see bench/charges.py)


if __name__ == "__main__":
    main()
