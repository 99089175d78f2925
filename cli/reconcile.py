"""`durapay reconcile`: run a reconciliation sweep now and print its report.

It starts the same workflow the schedule starts (trigger `manual`) on the workers' task queue, so
the report is also recorded (rows, events, worker log lines) exactly like a scheduled one.

Exit status: 0 when the window is clean, 2 when discrepancies were found, 1 when the sweep could
not run (no Temporal, no worker, the sweep failed). Scripts and cron jobs can alert on 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from core.domain import rfc3339
from core.settings import Settings
from core.temporal_client import connect_temporal

if TYPE_CHECKING:
    from core.reconciliation import Discrepancy
    from workflows.reconciliation import ReconciliationSweepResult

EXIT_CLEAN = 0
EXIT_FAILED = 1
EXIT_DISCREPANCIES = 2
# Long enough for a big window; short enough that a stack with no worker does not hang the shell.
SWEEP_TIMEOUT = timedelta(minutes=10)
COLUMNS = ("KIND", "REFERENCE", "INTENT", "OURS", "NETWORK")


def add_parser(commands: Any) -> None:
    reconcile = commands.add_parser(
        "reconcile", help="compare our transactions with the network's ledger now",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reconcile.add_argument("--window-seconds", type=int, default=None,
                           help="how far back to look (default: "
                                "DURAPAY_RECONCILE_SWEEP_WINDOW_SECONDS)")


def run(settings: Settings, window_seconds: int | None) -> NoReturn:
    """Run the sweep and leave through `os._exit` once the report is out.

    A short-lived process that used a Temporal client can abort (SIGABRT) while the interpreter
    finalizes, when the SDK's Rust threads release the GIL too late (temporalio/sdk-python#300,
    seen here about once in eight runs). Skipping finalization keeps the exit code truthful.
    """
    code = asyncio.run(reconcile(settings, window_seconds))
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


async def reconcile(settings: Settings, window_seconds: int | None,
                    out: TextIO = sys.stdout) -> int:
    # Imported here: the Temporal SDK and the workflow modules would slow every other command.
    from temporalio.client import WorkflowFailureError
    from temporalio.service import RPCError

    from core.reconciliation import SweepTrigger
    from workflows.reconciliation import ReconciliationSweepInput, ReconciliationSweepWorkflow

    window = window_seconds if window_seconds is not None \
        else settings.reconcile_sweep_window_seconds
    if window <= 0:
        print("durapay: --window-seconds must be positive", file=sys.stderr)
        return EXIT_FAILED
    try:
        client = await connect_temporal(settings)
        result = await client.execute_workflow(
            ReconciliationSweepWorkflow.run,
            ReconciliationSweepInput(window, SweepTrigger.MANUAL),
            id=f"durapay-reconciliation-manual-{uuid.uuid4().hex[:12]}",
            task_queue=settings.task_queue, execution_timeout=SWEEP_TIMEOUT)
    except (RPCError, RuntimeError) as error:
        print(f"durapay: cannot reach Temporal at {settings.effective_temporal_address} "
              f"({error}); is `durapay dev` running?", file=sys.stderr)
        return EXIT_FAILED
    except WorkflowFailureError as error:
        print(f"durapay: the reconciliation sweep failed: {error.cause}", file=sys.stderr)
        return EXIT_FAILED
    print_report(result, out)
    return EXIT_DISCREPANCIES if result.counts.discrepancies else EXIT_CLEAN


def print_report(result: ReconciliationSweepResult, out: TextIO) -> None:
    counts = result.counts
    print(f"reconciliation {result.run_id} ({result.trigger.value}) "
          f"window {rfc3339(result.window_start)} .. {rfc3339(result.window_end)}", file=out)
    print(f"checked {counts.transactions_checked} transactions and "
          f"{counts.ledger_entries_checked} ledger entries; {counts.in_flight} in flight; "
          f"{counts.discrepancies} discrepancies", file=out)
    if not result.discrepancies:
        print("no discrepancies", file=out)
        return
    rows = [COLUMNS, *(_row(d) for d in result.discrepancies)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    print(file=out)
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip(), file=out)
    hidden = counts.discrepancies - len(result.discrepancies)
    if hidden > 0:
        print(f"... and {hidden} more in reconciliation_discrepancy "
              f"(run_id = '{result.run_id}')", file=out)


def _row(found: Discrepancy) -> tuple[str, str, str, str, str]:
    ours = _side(found.our_status, found.our_amount_in_cents, found.currency)
    network = _side(found.network_status, found.network_amount_in_cents,
                    found.network_currency)
    return (found.kind, found.network_reference, found.payment_intent_id or "-", ours, network)


def _side(status: str | None, amount: int | None, currency: str | None) -> str:
    if status is None:
        return "absent"
    # Minor units as stored (2499 usd = $24.99; jpy has none): no float ever touches money.
    return f"{status} {amount} {currency}" if amount is not None else status
