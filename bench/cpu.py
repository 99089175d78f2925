"""CPU time each process of the stack spends per operation of a bench step.

On one machine the ratios `make bench` reports are a CPU budget shared by every process, so
"which process pays for a charge, and how much" is the question after "how fast". Each step
reads the CPU time (user + system) of every process before and after it: the stack's
children as the launcher names them in stack.json (`postgres` with its backends, `temporal`,
`api`, `worker-1`, `cardnet`), the bare workflow's worker while it runs, and the bench itself
(the load generator).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, 0.0 once it is gone.

    Postgres runs one backend per connection, and a pool's overflow connections close (their
    backends exit) during a step: an exited child's time is in its parent's `children_*`
    fields once reaped, so each live process counts its own time plus its reaped children's."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # a backend that closed between the listing and now
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree; `bench` is this process."""
    seconds = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    own = os.times()
    seconds["bench"] = own.user + own.system
    return seconds


@dataclass(frozen=True)
class CpuUse:
    """CPU spent by each process over a step of `operations` operations in `wall` seconds."""

    seconds: dict[str, float]
    operations: int
    wall: float

    @classmethod
    def between(
        cls, before: Mapping[str, float], after: Mapping[str, float], operations: int, wall: float
    ) -> CpuUse:
        # A process present at only one end (started or stopped mid-step) is left out rather
        # than counted as a negative or a whole-life figure.
        spent = {name: after[name] - before[name] for name in after if name in before}
        return cls(spent, operations, wall)

    def per_operation_ms(self) -> dict[str, float]:
        if not self.operations:
            return {}
        return {name: 1000 * seconds / self.operations for name, seconds in self.seconds.items()}

    @property
    def total_ms(self) -> float:
        """CPU per operation, all processes together."""
        return sum(self.per_operation_ms().values())

    @property
    def busy_cores(self) -> float:
        return sum(self.seconds.values()) / self.wall if self.wall else 0.0

    def line(self) -> str:
        """`cpu ms/op  total 95.1  worker-1 38.0  temporal 25.2 …  (1.86 cores busy)`,
        largest first; processes under 0.05 ms/op are left out."""
        per_op = self.per_operation_ms()
        shown = sorted(
            ((name, ms) for name, ms in per_op.items() if ms >= 0.05), key=lambda item: -item[1]
        )
        parts = "  ".join(f"{name} {ms:.1f}" for name, ms in shown)
        return (
            f"    cpu ms/op  total {self.total_ms:.1f}  {parts}  ({self.busy_cores:.2f} cores busy)"
        )
