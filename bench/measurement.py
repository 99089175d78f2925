"""How `make bench` measures a step: closed-loop operations, their latencies, the CPU each
process spent over them (bench/cpu.py) and the database statements they ran
(bench/statements.py)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from bench.cpu import CpuUse, snapshot
from bench.statements import StatementCounter, StatementUse

Operation = Callable[[], Awaitable[None]]


class Failed(Exception):
    """An operation got an answer other than the one a success gives."""


@dataclass
class Options:
    count: int
    concurrency: int
    warmup: int
    workers: int
    scaling: bool
    write_events: int = 1500
    write_path_only: bool = False
    burst_only: bool = False
    burst: bool = True  # the open-loop burst step (bench/burst.py), on a stack of its own


@dataclass
class Measurement:
    name: str
    count: int
    seconds: float
    latencies: list[float]  # successful operations only
    failures: list[str]
    cpu: CpuUse | None = None  # what each process spent over the step
    statements: StatementUse | None = None  # what the database ran over the step
    refused: int = 0  # requests refused at admission and sent again (operations still done)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p95(self) -> float:
        if len(self.latencies) < 2:
            return self.p50
        return statistics.quantiles(self.latencies, n=100)[94]

    def line(self) -> str:
        text = (
            f"{self.name:<24} {self.per_second:8.1f}/s   p50 {self.p50 * 1000:7.1f} ms   "
            f"p95 {self.p95 * 1000:7.1f} ms   errors {len(self.failures)}"
        )
        if self.refused:
            text += f"   refused and sent again {self.refused}"
        if self.failures:
            text += f"   (first: {self.failures[0][:200]})"
        if self.cpu:
            text += "\n" + self.cpu.line()
        if self.statements:
            text += "\n" + self.statements.line()
        return text


async def closed_loop(
    count: int, concurrency: int, operation: Operation
) -> tuple[list[float], list[str]]:
    """Run `count` operations with `concurrency` clients that each send their next operation
    as soon as their last one answered. Returns successful latencies and failure messages."""
    latencies: list[float] = []
    failures: list[str] = []
    remaining = count

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1  # no await between the check and this: no other client interleaves
            started = time.perf_counter()
            try:
                await operation()
            except Exception as error:  # noqa: BLE001 (a failed operation is a result here)
                failures.append(f"{type(error).__name__}: {error}")
            else:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failures


async def measure(
    name: str,
    operation: Operation,
    options: Options,
    processes: Mapping[str, int],
    count: int | None = None,
    statements: StatementCounter | None = None,
    refused: Callable[[], int] | None = None,
) -> Measurement:
    """One step: warm-up, then `count` operations timed, with the CPU each of `processes`
    (name → pid) and the bench itself spent over the timed part, and, given a `statements`
    counter, the database statements run over it; given `refused` (a running count of
    requests refused at admission and sent again), how many the timed part had."""
    # Warm-up at full concurrency, so every connection and cache the step uses exists first.
    await closed_loop(options.warmup, options.concurrency, operation)
    count = options.count if count is None else count
    if statements:
        await statements.reset()
    refused_before = refused() if refused else 0
    cpu_before = snapshot(processes)
    started = time.perf_counter()
    latencies, failures = await closed_loop(count, options.concurrency, operation)
    wall = time.perf_counter() - started
    cpu = CpuUse.between(cpu_before, snapshot(processes), count, wall)
    used = await statements.read(count) if statements else None
    result = Measurement(
        name,
        count,
        wall,
        latencies,
        failures,
        cpu,
        used,
        (refused() - refused_before) if refused else 0,
    )
    print(result.line(), flush=True)
    return result


def expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise Failed(f"HTTP {response.status_code} {response.text[:150]}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio(numerator: float, denominator: float) -> float:
    """NaN rather than a crash when a step had no success at all (its errors are printed)."""
    return numerator / denominator if denominator else float("nan")
