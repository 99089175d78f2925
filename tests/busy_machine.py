"""`make test-busy`: the suite on a busy machine. Starts CPU-burning processes beside a command
(by default `make test`), runs it, prints how long it took, stops the burners, and exits with
the command's status.

    python -m tests.busy_machine [--burners 2] [-- COMMAND ...]

Each burner spins in pure Python at normal priority, as another job on a shared CI runner
would. A suite that passes only on an idle machine depends on wall-clock margins that load can
eat; this is how to check that none does. Burners also stop on their own once this process is
gone (they watch their parent), so a killed run leaves nothing spinning.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BURN = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.busy_machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("command", nargs="*", default=["make", "test"])
    args = parser.parse_args(argv)
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners)]
    started = time.monotonic()
    try:
        status = subprocess.call(args.command)
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
    print(
        f"\nbusy machine: `{' '.join(args.command)}` with {args.burners} CPU burners beside "
        f"it exited {status} after {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
