"""A killed `durapay dev` leaves nothing behind that stops the next one: its children die with it
(the kernel's parent-death signal), and one that did not (here a simulator frozen with SIGSTOP,
which a TERM does not stop) is stopped by the next start, which names it.

Runs on its own stack: it kills the launcher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.dev_children import PID_FILE, LauncherStillRunning, process_start, stop_leftovers
from tests.integration.helpers import own_stack
from tests.stack import RunningStack, launch_again, process_alive

pytestmark = pytest.mark.integration


@pytest.fixture
def doomed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "doomed") as running:
        yield running


def test_a_sigkilled_launcher_leaves_no_child_holding_the_next_ones_ports(
    doomed_stack: RunningStack,
) -> None:
    stack = doomed_stack
    children = {name: stack.child_pid(name) for name in stack.state()["children"]}
    frozen = children["cardnet"]
    os.kill(frozen, signal.SIGSTOP)
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    # The others stop by themselves: the kernel told them their parent died.
    others = {name: pid for name, pid in children.items() if pid != frozen}
    deadline = time.monotonic() + 60  # Postgres' fast shutdown, the workers' graceful one
    while any(_alive(pid) for pid in others.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [name for name, pid in others.items() if _alive(pid)] == []
    assert _alive(frozen)

    again = launch_again(stack)
    try:
        said = (stack.home / "launcher.out").read_text()
        assert (
            f"stopped what an earlier durapay dev left running on {stack.home}: "
            f"cardnet (pid {frozen})\n"
        ) in said, said
        assert not _alive(frozen)
        assert httpx.get(f"{again.api_url}/healthz", timeout=5).status_code == 200
        assert all(pid not in children.values() for pid in again.state()["children"].values())
    finally:
        again.stop()


def _alive(pid: int) -> bool:
    """Running, and not a zombie its (dead) parent never reaped: init reaps those at once."""
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
        except OSError:
            return False
        if state == "Z":
            time.sleep(0.1)
            continue
        return True
    return process_alive(pid)


# ---- the pid file on its own (no stack: a `sleep` plays the child) ------------------------------
def _spawn_orphan() -> int:
    """A `sleep` leading its own session whose parent has exited, as a killed launcher's child:
    whoever adopted it reaps it the moment it dies."""
    shell = subprocess.run(
        ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(shell.stdout)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _record(home: Path, *, launcher: int, started: int | None = None, **children: int) -> None:
    (home / PID_FILE).parent.mkdir(parents=True, exist_ok=True)
    (home / PID_FILE).write_text(
        json.dumps(
            {
                "launcher": {"pid": launcher, "started": started},
                "children": {
                    name: {"pid": pid, "started": process_start(pid)}
                    for name, pid in children.items()
                },
            }
        )
    )


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_the_next_start_stops_and_names_what_a_dead_launcher_left(tmp_path: Path) -> None:
    orphan = _spawn_orphan()
    try:
        _record(tmp_path, launcher=_dead_pid(), cardnet=orphan)
        assert stop_leftovers(tmp_path) == [f"cardnet (pid {orphan})"]
        assert _gone(orphan)
        assert not (tmp_path / PID_FILE).exists()
        assert stop_leftovers(tmp_path) == []  # nothing recorded: nothing to do
    finally:
        _kill(orphan)


def test_a_recycled_pid_is_never_stopped(tmp_path: Path) -> None:
    orphan = _spawn_orphan()
    try:
        _record(tmp_path, launcher=_dead_pid(), cardnet=orphan)
        record = json.loads((tmp_path / PID_FILE).read_text())
        record["children"]["cardnet"]["started"] -= 1  # another process had this pid before
        (tmp_path / PID_FILE).write_text(json.dumps(record))
        assert stop_leftovers(tmp_path) == []
        assert process_alive(orphan)
    finally:
        _kill(orphan)


def test_a_running_launcher_is_refused_not_stopped(tmp_path: Path) -> None:
    launcher, child = _spawn_orphan(), _spawn_orphan()
    try:
        _record(tmp_path, launcher=launcher, started=process_start(launcher), cardnet=child)
        with pytest.raises(LauncherStillRunning, match=f"pid {launcher}"):
            stop_leftovers(tmp_path)
        assert process_alive(launcher) and process_alive(child)
    finally:
        _kill(launcher)
        _kill(child)
