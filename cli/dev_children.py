"""`durapay dev`'s children never outlive it for long.

Each child runs in a session of its own (so a terminal's Ctrl-C reaches only the launcher),
which also means nothing stops them when the launcher itself is killed (SIGKILL, or a TERM
followed by a KILL on a busy machine): they would keep the state dir's ports and data, and the
next `durapay dev` would fail (Postgres: "could not create any TCP/IP sockets"). Two guards:

- On Linux every child asks the kernel for a signal when the launcher dies
  (`PR_SET_PDEATHSIG`): SIGTERM, a graceful stop, and for Postgres SIGINT, its fast shutdown
  (its backends follow their postmaster).
- The launcher keeps a pid file (`run/dev-children.json`: every child's pid and its start
  time, so a recycled pid is never mistaken for it). The next start stops whatever the file
  names that still runs, and says so, before it starts anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PID_FILE = Path("run") / "dev-children.json"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# A graceful stop gets this long (workers finish their activities, Postgres checkpoints) before
# the rest of the child's session is killed.
STOP_TIMEOUT_SECONDS = 15.0
# A killed child's leftovers (Postgres backends) exit by themselves within moments.
REAP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RunningProcess:
    pid: int
    # Clock ticks after boot at which it started (/proc/<pid>/stat); None where unknown.
    started: int | None


def process_start(pid: int) -> int | None:
    """When `pid` started (Linux: /proc/<pid>/stat field 22), or None if it is gone or this is
    not Linux."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (the state) on; empty if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rpartition(")")[2].split()


def still_running(process: RunningProcess) -> bool:
    """The very process that was recorded runs still (not another one under its recycled pid)."""
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process (Postgres runs as its own user when we are root)
    fields = _stat_fields(process.pid)
    if not fields:  # not Linux (or just gone): the pid alone decides
        return True
    if fields[0] == "Z":  # dead, its exit status not collected yet
        return False
    return process.started is None or int(fields[19]) == process.started


def parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child receive `sig` when the launcher dies; None outside
    Linux. Everything it needs is looked up here, before the fork: the child only calls it.
    The signal is tied to the thread that forks, so children are started from the event loop's
    thread, which lives as long as the launcher."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    option, number = PR_SET_PDEATHSIG, int(sig)

    def ask_for_the_signal() -> None:
        prctl(option, number, 0, 0, 0)

    return ask_for_the_signal


def write_pid_file(home: Path, children: dict[str, int]) -> None:
    """Record the launcher and its children (atomically: a reader never sees half a file)."""
    path = home / PID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "launcher": _entry(os.getpid()),
        "children": {name: _entry(pid) for name, pid in children.items()},
    }
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(path)


def remove_pid_file(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / PID_FILE).unlink()


class LauncherStillRunning(Exception):
    pass


def stop_leftovers(home: Path) -> list[str]:
    """Stop every child an earlier launcher on this state dir left running, and return what was
    stopped ("postgres (pid 123)"), for the message. Refuses while that launcher itself runs:
    two launchers must not share one state dir."""
    try:
        record = json.loads((home / PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    launcher = _process(record.get("launcher"))
    if launcher is not None and launcher.pid != os.getpid() and still_running(launcher):
        raise LauncherStillRunning(
            f"another durapay dev (pid {launcher.pid}) runs on {home}; stop it first"
        )
    left = {
        name: process
        for name, entry in record.get("children", {}).items()
        if (process := _process(entry)) is not None and still_running(process)
    }
    for name, process in left.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and any(still_running(p) for p in left.values()):
        time.sleep(0.1)
    for process in left.values():
        reap_session(process.pid, REAP_TIMEOUT_SECONDS)  # the stubborn, and their sessions
    remove_pid_file(home)
    return [f"{name} (pid {process.pid})" for name, process in left.items()]


def reap_session(pid: int, timeout: float) -> None:
    """Kill whatever is left of a child's session (each child leads its own, whose id is its
    pid) and wait, bounded, until it is gone (Postgres backends release their shared memory)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # ProcessLookupError once the last one is gone
            time.sleep(0.05)


def _entry(pid: int) -> dict[str, int | None]:
    return {"pid": pid, "started": process_start(pid)}


def _process(entry: object) -> RunningProcess | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
        return None
    started = entry.get("started")
    return RunningProcess(entry["pid"], started if isinstance(started, int) else None)
