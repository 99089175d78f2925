"""The event loop's lag, for `durapay_event_loop_lag_seconds` in the API and the workers.

A loop that runs late delays everything in its process alike (answers, refusals, activity
heartbeats) and shows in no single request's own timing: a process starved of CPU by its
neighbours, a blocking call, or a long callback. Sampled by a timer, so the cost is one wake-up
per interval whatever the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

SAMPLE_INTERVAL_SECONDS = 0.1


async def watch_loop_lag(
    observe: Callable[[float], object], interval: float = SAMPLE_INTERVAL_SECONDS
) -> None:
    """Call `observe` (a histogram's `observe`, or the bench's recorder), until cancelled,
    with how much later than `interval` each sleep of it ended."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - asked - interval))
