"""Leaving a short-lived command that used a Temporal client."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_without_finalizing(code: int) -> NoReturn:
    """Flush what the command printed and leave through `os._exit`.

    A short-lived process that used a Temporal client can abort (SIGABRT) while the interpreter
    finalizes, when the SDK's Rust threads release the GIL too late (temporalio/sdk-python#300,
    seen here about once in eight runs of `durapay reconcile` and `durapay review`). Skipping
    finalization keeps the exit code truthful.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
