"""`durapay_schedule_paused`: read at scrape, one read per cache period, bounded in time, and a
failed read leaves the gauge out of the scrape instead of breaking it or reporting "running".
(On the real stack, pausing a schedule: tests/integration/test_worker_metrics.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import ScheduleGauges


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reads:
    """A schedule reader that answers what it is told and counts its calls."""

    def __init__(self, answer: Mapping[str, bool | None] | Exception) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> Mapping[str, bool | None]:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def exposed(gauges: ScheduleGauges) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(gauges)
    text = generate_latest(registry).decode()
    return {
        s.labels["schedule"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "durapay_schedule_paused"
    }


async def test_paused_is_1_and_running_is_0() -> None:
    gauges = ScheduleGauges(clock=Clock())
    await gauges.refresh(
        Reads({"durapay-reconciliation-sweep": True, "durapay-audit-checkpoint": False})
    )
    assert exposed(gauges) == {"durapay-reconciliation-sweep": 1.0, "durapay-audit-checkpoint": 0.0}


async def test_one_read_serves_scrapes_for_the_cache_period() -> None:
    clock = Clock()
    gauges = ScheduleGauges(cache_seconds=5, clock=clock)
    reads = Reads({"s": False})
    await gauges.refresh(reads)
    reads.answer = {"s": True}
    clock.now += 4.9
    await gauges.refresh(reads)
    assert (reads.calls, exposed(gauges)) == (1, {"s": 0.0})
    clock.now += 0.1
    await gauges.refresh(reads)
    assert (reads.calls, exposed(gauges)) == (2, {"s": 1.0})


async def test_scrapes_arriving_together_share_one_read() -> None:
    gauges = ScheduleGauges(clock=Clock())
    reads = Reads({"s": True})
    await asyncio.gather(*(gauges.refresh(reads) for _ in range(5)))
    assert reads.calls == 1


async def test_a_failed_read_leaves_the_gauge_out_until_a_read_succeeds() -> None:
    clock = Clock()
    gauges = ScheduleGauges(cache_seconds=5, clock=clock)
    await gauges.refresh(Reads({"s": True}))
    clock.now += 5
    await gauges.refresh(Reads(RuntimeError("Temporal is down")))
    assert exposed(gauges) == {}  # not the stale 1, and not "running"
    clock.now += 5
    await gauges.refresh(Reads({"s": True}))
    assert exposed(gauges) == {"s": 1.0}


async def test_a_schedule_temporal_did_not_describe_is_left_out() -> None:
    gauges = ScheduleGauges(clock=Clock())
    await gauges.refresh(Reads({"known": False, "unknown": None}))
    assert exposed(gauges) == {"known": 0.0}


async def test_a_slow_read_is_cut_short() -> None:
    gauges = ScheduleGauges(read_seconds=0.05, clock=Clock())

    async def never() -> Mapping[str, bool | None]:
        await asyncio.Event().wait()
        return {}

    started = time.monotonic()
    await gauges.refresh(never)
    assert time.monotonic() - started < 2
    assert exposed(gauges) == {}
