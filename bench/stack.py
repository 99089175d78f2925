"""The stacks `make bench` starts: `durapay dev` on free ports in a temp dir (tests/stack.py),
its Postgres counting statements (bench/statements.py), stopped when the block ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from core.settings import Settings
from tests.stack import RunningStack, start_stack

TRACK_STATEMENTS = {"DURAPAY_POSTGRES_TRACK_STATEMENTS": "true"}
# The bench measures the product's admission control, not the test stack's looser floor.
BENCH_ENV = {
    **TRACK_STATEMENTS,
    "DURAPAY_API_MIN_IN_FLIGHT": str(Settings.model_fields["api_min_in_flight"].default),
}


def stack_processes(stack: RunningStack) -> dict[str, int]:
    """The launcher's children by name (postgres, temporal, api, worker-N, cardnet)."""
    children = stack.state()["children"]
    assert isinstance(children, dict), children
    return {str(name): int(pid) for name, pid in children.items()}


@asynccontextmanager
async def running_stack(
    workdir: Path, workers: int, *, name: str = ""
) -> AsyncIterator[RunningStack]:
    started = time.perf_counter()
    # start_stack blocks (it polls with sleeps); nothing else runs meanwhile.
    stack = start_stack(workdir / f"home-{name}{workers}w", workers=workers, extra_env=BENCH_ENV)
    print(
        f"\nstack with {workers} worker process(es) up in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    try:
        yield stack
    finally:
        stack.stop()
