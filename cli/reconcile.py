"""`durapay reconcile`: run a reconciliation sweep now, and see and resolve what sweeps found.

    durapay reconcile [--window-seconds N]       sweep now and print the report
    durapay reconcile list                       open discrepancies, oldest first (exit 2 if any)
    durapay reconcile resolve ID --note TEXT     resolve one open discrepancy (rcd_…)

A sweep starts the same workflow the schedule starts (trigger `manual`) on the workers' task
queue, so its report is recorded exactly like a scheduled one. A problem is one open item per
(reference, kind) until resolved: the sweep that first finds it opens it (event and worker log
line), later sweeps report it as still open, and a sweep that checks it again and no longer
finds it resolves it ("cleared by sweep <run>"). `resolve` is for the rest: the operator fixed
it or accepted it, and says how in the note. Seen again after that, it opens a new item.

Exit status of a sweep: 0 when it found nothing, 2 when it found discrepancies (new or still
open), 1 when it could not run (no Temporal, no worker, the sweep failed). Scripts and cron
jobs can alert on 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from cli.shutdown import exit_without_finalizing
from core.domain import rfc3339, utcnow
from core.settings import Settings
from core.temporal_client import connect_temporal

if TYPE_CHECKING:
    from core.db.tables import ReconciliationDiscrepancy
    from core.reconciliation import Discrepancy
    from workflows.reconciliation import ReconciliationSweepResult

EXIT_CLEAN = 0
EXIT_FAILED = 1
EXIT_DISCREPANCIES = 2
# Long enough for a big window; short enough that a stack with no worker does not hang the shell.
SWEEP_TIMEOUT = timedelta(minutes=10)
COLUMNS = ("ID", "ITEM", "KIND", "REFERENCE", "INTENT", "OURS", "NETWORK")
OPEN_COLUMNS = ("ID", "KIND", "REFERENCE", "INTENT", "OURS", "NETWORK", "OPEN FOR", "DETAIL")
RESOLVE_HINT = "resolve with: durapay reconcile resolve ID --note '…'"


def add_parser(commands: Any) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="compare our transactions with the network's ledger now; "
        "list and resolve open discrepancies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reconcile.add_argument(
        "--window-seconds",
        type=int,
        default=None,
        help="how far back to look (default: DURAPAY_RECONCILE_SWEEP_WINDOW_SECONDS)",
    )
    # No subcommand: sweep now.
    items = reconcile.add_subparsers(dest="reconcile_command", metavar="{list,resolve}")
    items.add_parser("list", help="open discrepancies, oldest first (exit 2 if any)")
    resolve = items.add_parser("resolve", help="resolve one open discrepancy")
    resolve.add_argument("discrepancy_id", help="the item's id (rcd_…), from `list`")
    resolve.add_argument("--note", required=True, help="what was done about it, or why it stands")


def run(settings: Settings, request: argparse.Namespace | int | None) -> NoReturn:
    """Run the command and leave without finalizing once the report is out (see
    `exit_without_finalizing`).

    `request` is the parsed command line; a bare window (int or None) still means "sweep".
    """
    if isinstance(request, argparse.Namespace) and request.reconcile_command:
        code = asyncio.run(run_items(request, settings))
    else:
        window = request.window_seconds if isinstance(request, argparse.Namespace) else request
        code = asyncio.run(reconcile(settings, window))
    exit_without_finalizing(code)


async def reconcile(
    settings: Settings, window_seconds: int | None, out: TextIO = sys.stdout
) -> int:
    # Imported here: the Temporal SDK and the workflow modules would slow every other command.
    from temporalio.client import WorkflowFailureError
    from temporalio.service import RPCError

    from core.reconciliation import SweepTrigger
    from workflows.reconciliation import ReconciliationSweepInput, ReconciliationSweepWorkflow

    window = (
        window_seconds if window_seconds is not None else settings.reconcile_sweep_window_seconds
    )
    if window <= 0:
        print("durapay: --window-seconds must be positive", file=sys.stderr)
        return EXIT_FAILED
    try:
        client = await connect_temporal(settings)
        result = await client.execute_workflow(
            ReconciliationSweepWorkflow.run,
            ReconciliationSweepInput(
                window, SweepTrigger.MANUAL, settings.reconcile_stuck_after_seconds
            ),
            id=f"durapay-reconciliation-manual-{uuid.uuid4().hex[:12]}",
            task_queue=settings.task_queue,
            execution_timeout=SWEEP_TIMEOUT,
        )
    except (RPCError, RuntimeError) as error:
        print(
            f"durapay: cannot reach Temporal at {settings.effective_temporal_address} "
            f"({error}); is `durapay dev` running?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except WorkflowFailureError as error:
        print(f"durapay: the reconciliation sweep failed: {error.cause}", file=sys.stderr)
        return EXIT_FAILED
    print_report(result, out)
    return EXIT_DISCREPANCIES if result.counts.discrepancies else EXIT_CLEAN


def print_report(result: ReconciliationSweepResult, out: TextIO) -> None:
    counts = result.counts
    print(
        f"reconciliation {result.run_id} ({result.trigger.value}) "
        f"window {rfc3339(result.window_start)} .. {rfc3339(result.window_end)}",
        file=out,
    )
    print(
        f"checked {counts.transactions_checked} transactions and "
        f"{counts.ledger_entries_checked} ledger entries; {counts.in_flight} in flight; "
        f"{counts.discrepancies} discrepancies ({counts.newly_opened} newly opened, "
        f"{counts.still_open} still open); {counts.cleared} cleared",
        file=out,
    )
    if not result.discrepancies:
        print("no discrepancies", file=out)
        return
    print(file=out)
    _print_table([COLUMNS, *(_row(d) for d in result.discrepancies)], out)
    hidden = counts.discrepancies - len(result.discrepancies)
    if hidden > 0:
        print(f"... and {hidden} more: durapay reconcile list", file=out)
    print(RESOLVE_HINT, file=out)


async def run_items(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """`list` and `resolve`: straight to the database, no Temporal needed."""
    if args.reconcile_command == "list":
        return await list_discrepancies(settings, out)
    return await resolve(settings, args.discrepancy_id, args.note, out)


async def list_discrepancies(settings: Settings, out: TextIO = sys.stdout) -> int:
    from core.db.discrepancies import list_open_discrepancies
    from core.db.session import create_engine, session_factory

    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            items = await list_open_discrepancies(session)
    finally:
        await engine.dispose()
    if not items:
        print("no open discrepancies", file=out)
        return EXIT_CLEAN
    now = utcnow()
    _print_table([OPEN_COLUMNS, *(_open_row(item, now) for item in items)], out)
    print(f"{len(items)} open; {RESOLVE_HINT}", file=out)
    return EXIT_DISCREPANCIES  # like a sweep that finds some: a cron job or alert can notice


async def resolve(
    settings: Settings, discrepancy_id: str, note: str, out: TextIO = sys.stdout
) -> int:
    from core.db.discrepancies import resolve_discrepancy
    from core.db.session import create_engine, session_factory

    if not note.strip():
        print("durapay reconcile: --note must say what was done", file=sys.stderr)
        return EXIT_FAILED
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            outcome = await resolve_discrepancy(session, discrepancy_id, note=note.strip())
    finally:
        await engine.dispose()
    item = outcome.discrepancy
    if item is None:
        print(f"durapay reconcile: no discrepancy {discrepancy_id}", file=sys.stderr)
        return EXIT_FAILED
    if not outcome.resolved:
        when = rfc3339(item.resolved_at) if item.resolved_at else "?"
        print(
            f"durapay reconcile: {discrepancy_id} was already resolved at {when}: "
            f"{item.resolution_note}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(
        f"{discrepancy_id} resolved ({item.kind} {item.network_reference}): {item.resolution_note}",
        file=out,
    )
    return EXIT_CLEAN


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


def _row(found: Discrepancy) -> tuple[str, ...]:
    ours = _side(found.our_status, found.our_amount_in_cents, found.currency)
    network = _side(found.network_status, found.network_amount_in_cents, found.network_currency)
    return (
        found.discrepancy_id or "-",
        "new" if found.newly_opened else "open",
        found.kind,
        found.network_reference,
        found.payment_intent_id or "-",
        ours,
        network,
    )


def _open_row(item: ReconciliationDiscrepancy, now: datetime) -> tuple[str, ...]:
    ours = _side(item.our_status, item.our_amount_in_cents, item.currency)
    network = _side(item.network_status, item.network_amount_in_cents, item.network_currency)
    hours = (now - item.created_at).total_seconds() / 3600
    detail = json.dumps(item.detail, sort_keys=True, separators=(",", ":")) if item.detail else "-"
    return (
        item.id,
        item.kind,
        item.network_reference,
        item.payment_intent_id or "-",
        ours,
        network,
        f"{hours:.1f} h",
        detail,
    )


def _side(status: str | None, amount: int | None, currency: str | None) -> str:
    if status is None:
        return "absent"
    # Minor units as stored (2499 usd = $24.99; jpy has none): no float ever touches money.
    return f"{status} {amount} {currency}" if amount is not None else status
