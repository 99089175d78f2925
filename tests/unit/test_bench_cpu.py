"""bench/cpu.py: the CPU each process spends per operation of a bench step."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.cpu import CpuUse, tree_cpu_seconds

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


@pytest.mark.processes
def test_an_exited_and_reaped_child_still_counts_for_its_parent() -> None:
    # Postgres backends of overflow connections exit mid-step; their CPU must not vanish.
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", BURN], check=True)
    assert tree_cpu_seconds(os.getpid()) - before >= 0.3


@pytest.mark.processes
def test_a_live_child_counts_for_its_parent() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", BURN + "input()\n"], stdin=subprocess.PIPE, text=True
    )
    try:
        before = tree_cpu_seconds(os.getpid())
        # Wait until it has burned its 0.3 s (it then blocks on stdin, alive).
        deadline = time.monotonic() + 30
        while tree_cpu_seconds(child.pid) < 0.3:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert tree_cpu_seconds(os.getpid()) - before >= 0.3 - 0.05
    finally:
        child.communicate("\n")


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert tree_cpu_seconds(child.pid) == 0.0


def test_per_operation_figures_and_the_printed_line() -> None:
    use = CpuUse.between(
        {"worker-1": 10.0, "temporal": 5.0, "gone": 1.0, "bench": 2.0},
        {"worker-1": 12.0, "temporal": 6.0, "bench": 2.5, "new": 9.0},
        operations=100,
        wall=2.0,
    )
    # Processes seen at only one end are left out, not counted whole or negative.
    assert use.seconds == {"worker-1": 2.0, "temporal": 1.0, "bench": 0.5}
    assert use.per_operation_ms() == {"worker-1": 20.0, "temporal": 10.0, "bench": 5.0}
    assert use.total_ms == 35.0
    assert use.busy_cores == 1.75
    assert use.line() == (
        "    cpu ms/op  total 35.0  worker-1 20.0  temporal 10.0  bench 5.0  (1.75 cores busy)"
    )


def test_tiny_figures_are_left_out_of_the_line_but_not_the_total() -> None:
    use = CpuUse({"api": 1.0, "cardnet": 0.000_01}, operations=10, wall=1.0)
    assert "cardnet" not in use.line()
    assert "total 100.0" in use.line()


def test_no_operations_or_no_time_gives_no_figures() -> None:
    assert CpuUse({"api": 1.0}, operations=0, wall=0.0).per_operation_ms() == {}
    assert CpuUse({"api": 1.0}, operations=0, wall=0.0).busy_cores == 0.0
