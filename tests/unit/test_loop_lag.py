"""core/loop_lag.py: the event loop's lag as the histogram sees it."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

from core.loop_lag import watch_loop_lag


def _histogram() -> tuple[Histogram, CollectorRegistry]:
    registry = CollectorRegistry()
    return Histogram(
        "lag_seconds", "lag", buckets=(0.01, 0.1, 0.2, 1.0), registry=registry
    ), registry


def _count_above(registry: CollectorRegistry, bound: str) -> float:
    total = registry.get_sample_value("lag_seconds_count") or 0.0
    at_or_below = registry.get_sample_value("lag_seconds_bucket", {"le": bound}) or 0.0
    return total - at_or_below


async def test_a_loop_blocked_by_a_callback_shows_its_lag() -> None:
    histogram, registry = _histogram()
    watcher = asyncio.create_task(watch_loop_lag(histogram.observe, interval=0.02))
    try:
        await asyncio.sleep(0.1)
        before = _count_above(registry, "0.2")
        sum_before = registry.get_sample_value("lag_seconds_sum") or 0.0
        time.sleep(0.3)  # blocks the loop: the watcher's sleep ends ~0.28 s late
        await asyncio.sleep(0.05)
        assert _count_above(registry, "0.2") >= before + 1
        assert (registry.get_sample_value("lag_seconds_sum") or 0.0) - sum_before >= 0.25
    finally:
        watcher.cancel()
