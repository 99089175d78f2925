"""`make bench`: how fast the real stack charges cards, what each charge costs every process in
CPU and the database in statements, and how it answers a burst; as ratios against baselines
measured in the same run on the same machine (absolute numbers vary with the machine; ratios
less so).

It starts its own stack (free ports, temp state dir, its Postgres counting statements with
pg_stat_statements, stopped at the end), then measures each step closed loop (every client
sends its next operation as soon as the last one answered) at a fixed concurrency (default 20)
and count (default 200), after a few warm-up operations that are not counted (connection
pools, worker caches and first-call costs):
  1. network baseline: authorizations sent straight to the simulator (no Durapay at all);
  2. bare workflow baseline: a Temporal workflow that runs two no-op activities one after the
     other (bench/bare_workflow.py), started and awaited by the bench (start → result) on the
     stack's own Temporal server, hosted on its own task queue by a worker in a separate
     process (bench/bare_worker.py), like Durapay's workers and with their workflow runner
     (unsandboxed unless DURAPAY_WORKFLOW_SANDBOX): what Temporal alone costs;
  3. create + charge: signed `POST /payment-intents`, then signed `POST …/transactions` with
     4242, one unit per payment (latency = both requests): the figure that matters;
  4. create: signed `POST /payment-intents` (DB insert and its event; no workflow yet);
  5. retrieve: signed `GET /payment-intents/{id}` (auth + one query, no workflow);
  6. charge: signed `POST …/transactions` alone, on intents created in step 4.
Each step prints throughput and latency percentiles; under them the CPU time each process
spent per operation (`cpu ms/op`: the stack's processes by name, the bare worker, and `bench`,
the load generator itself; bench/cpu.py) with how many of the machine's cores were busy (on
one machine every process shares one CPU budget, so this says who pays for a charge); and for
steps 3 to 6 the database statements per operation (`statements/op`, bench/statements.py:
every statement of every process, BEGIN, COMMIT and foreign-key checks included).
Then the per-key rate limiter's cost (bench/limiter_cost.py), and the write path
(bench/event_writes.py): 32 writers appending payment events through the real writer, all for
one merchant and then one merchant each, and the ratio of the two (target ≥ 0.9: one merchant
is not capped by a merchant-wide lock). `--write-path-only` starts a stack and runs this step
alone (well under a minute).
The summary (bench/summary.py) prints, each with its target and PASS or FAIL:
  Python tier cpu (API + workers + Postgres) / Temporal cpu, per create + charge   ≤ 1.0
  database statements per create + charge                                          ≤ 30
  API cpu per signed retrieve ≤ 2 ms, statements per signed retrieve               ≤ 3
  create + charge throughput / bare workflow throughput                            ≥ 0.8
  create + charge p50 / bare workflow p50                                          ≤ 1.5
the statements a create + charge runs, most run first, and the Temporal history of one payment
charged in step 3 (read through the Temporal client, whether the workflow is still running or
closed), against its targets: ≤ 20 events, ≤ 3 workflow tasks after the start, exactly one
(network) activity scheduled.

Then the burst step (bench/burst.py), on a fresh stack of its own: open-loop arrivals of
create + charge at a calm rate, at 3× the capacity measured there for 20 s, then calm again,
every request retried after Retry-After as a careful client would; per phase the answers,
p50/p99 of refusals and of accepted charges, when latency was back to calm, and whether every
accepted intent settled with the chaos test's audit all 0. `--burst-only` runs this step alone
(about two minutes); `--no-burst` leaves it out.

--scaling also measures create + charge on a second, fresh stack with twice the worker
processes (1 → 2 by default) and prints the ratio. The first figure is step 3 of the main run:
no step before it touches Durapay, so its stack is as fresh as the second one.

Numbers are only as steady as the machine: anything else running on it (a test suite, another
stack) slows whichever step it overlaps, so compare runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvloop
from pydantic import TypeAdapter
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.bare_workflow import BareWorkflow
from bench.burst import BurstOptions, BurstRun, print_burst, run_burst
from bench.event_writes import WriteRun, measure_event_writes, print_write_path
from bench.history import HistorySummary, summarize
from bench.limiter_cost import measure_rate_limiter, print_rate_limiter
from bench.measurement import Measurement, Options, expect, measure
from bench.operations import durapay_operations
from bench.stack import running_stack, stack_processes
from bench.statements import StatementCounter
from bench.summary import Results, print_scaling, print_summary
from cli.shutdown import exit_without_finalizing
from core.settings import Settings
from tests.stack import RunningStack, stop_process

REPO = Path(__file__).resolve().parents[1]


# ---- the bare workflow baseline ------------------------------------------------------------


@contextmanager
def bare_worker(
    address: str, namespace: str, task_queue: str, log: Path, sandbox: bool
) -> Iterator[subprocess.Popen[bytes]]:
    """The bare workflow's worker, in its own process (as Durapay's workers are), stopped with
    SIGTERM when the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_worker",
                "--address",
                address,
                "--namespace",
                namespace,
                "--task-queue",
                task_queue,
                *(["--sandbox"] if sandbox else []),
            ],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process
    finally:
        stop_process(process)


async def wait_for_pollers(
    client: Client,
    task_queue: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60.0,
) -> None:
    """Until the server sees the worker polling both its workflow and activity task queues
    (a started process is not yet a polling one)."""
    deadline = time.monotonic() + timeout
    kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"bare worker exited ({process.returncode}):\n"
                + log.read_text(errors="replace")[-2000:]
            )
        described = [
            await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=task_queue),
                    task_queue_type=kind,
                )
            )
            for kind in kinds
        ]
        if all(answer.pollers for answer in described):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(
        "bare worker not polling in time:\n" + log.read_text(errors="replace")[-2000:]
    )


def stack_runs_sandboxed(stack: RunningStack) -> bool:
    """Whether Durapay's workers in `stack` run workflows in Temporal's sandbox: the stack's
    DURAPAY_WORKFLOW_SANDBOX, parsed as the settings parse it, or the setting's default."""
    raw = stack.env.get("DURAPAY_WORKFLOW_SANDBOX")
    default = bool(Settings.model_fields["workflow_sandbox"].default)
    return default if raw is None else TypeAdapter(bool).validate_python(raw)


async def measure_bare_workflow(
    stack: RunningStack, options: Options, workdir: Path
) -> Measurement:
    # Default data converter, like the bare worker: bare Temporal, no Durapay codec.
    client = await Client.connect(stack.temporal_address)
    task_queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
    log = workdir / "bare-worker.log"

    async def run_bare_workflow() -> None:
        await client.execute_workflow(
            BareWorkflow.run, id=f"{task_queue}-{uuid.uuid4().hex}", task_queue=task_queue
        )

    # Only while measured, so it takes no CPU from the Durapay steps.
    with bare_worker(
        stack.temporal_address, client.namespace, task_queue, log, stack_runs_sandboxed(stack)
    ) as process:
        await wait_for_pollers(client, task_queue, process, log)
        processes = {**stack_processes(stack), "bare-worker": process.pid}
        return await measure("bare workflow (2 acts)", run_bare_workflow, options, processes)


# ---- the history of one charged payment ----------------------------------------------------


async def charged_history(stack: RunningStack, intent_id: str) -> HistorySummary:
    """The workflow id is the intent id; the latest run, running or closed."""
    client = await stack.temporal_client()
    return summarize(await client.get_workflow_handle(intent_id).fetch_history())


# ---- runs ----------------------------------------------------------------------------------


async def run_all_steps(stack: RunningStack, options: Options, workdir: Path) -> Results:
    processes = stack_processes(stack)
    statements = await StatementCounter.connect(stack.database_url)
    try:
        async with durapay_operations(stack, options.concurrency) as ops:
            network = await measure(
                "network authorize", ops.authorize_at_network, options, processes
            )
            bare = await measure_bare_workflow(stack, options, workdir)
            refused = lambda: ops.refused  # noqa: E731
            create_and_charge = await measure(
                "create + charge",
                ops.create_and_charge,
                options,
                processes,
                statements=statements,
                refused=refused,
            )
            create = await measure(
                "create intent",
                ops.create,
                options,
                processes,
                statements=statements,
                refused=refused,
            )
            retrieve = await measure(
                "retrieve intent",
                ops.retrieve,
                options,
                processes,
                statements=statements,
                refused=refused,
            )
            # Charges the intents the create step made, warm-up included, warm-up excluded
            # from the count; fewer if some creates failed.
            charge_count = len(ops.uncharged) - options.warmup
            charge = (
                await measure(
                    "charge (end to end)",
                    ops.charge,
                    options,
                    processes,
                    charge_count,
                    statements=statements,
                    refused=refused,
                )
                if charge_count > 1
                else None
            )
            history_of = ops.charged[0] if ops.charged else None
    finally:
        await statements.close()
    history: HistorySummary | str | None = None
    if history_of:
        try:
            history = await charged_history(stack, history_of)
        except Exception as error:  # noqa: BLE001 (report it; the measurements still stand)
            history = f"could not read it: {type(error).__name__}: {error}"
    return Results(network, bare, create_and_charge, create, retrieve, charge, history_of, history)


async def run_create_and_charge(
    stack: RunningStack, options: Options, name: str = "create + charge"
) -> Measurement:
    async with durapay_operations(stack, options.concurrency) as ops:
        return await measure(
            name,
            ops.create_and_charge,
            options,
            stack_processes(stack),
            refused=lambda: ops.refused,
        )


async def run_burst_step(workdir: Path, options: Options, burst: BurstOptions) -> BurstRun:
    """On a fresh stack: its create + charge capacity, then the burst at a multiple of it."""
    async with running_stack(workdir, options.workers, name="burst-") as stack:
        capacity = await run_create_and_charge(stack, options, "create + charge (capacity)")
        return await run_burst(stack, capacity, burst)


async def run_write_path(
    stack: RunningStack, options: Options, writers: int = 32
) -> tuple[WriteRun, WriteRun]:
    print(f"\nwrite path: {writers} writers, {options.write_events} events per layout", flush=True)
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {stack.admin_token}"}
    ) as admin:
        merchants = []
        for n in range(writers):
            response = await admin.post("/merchants", json={"name": f"Bench writes {n}"})
            expect(response, 201)
            merchants.append(str(response.json()["id"]))
    return await measure_event_writes(
        stack.database_url,
        merchants,
        stack_processes(stack),
        events=options.write_events,
        warmup=writers,
    )


async def bench(options: Options, burst: BurstOptions) -> None:
    with tempfile.TemporaryDirectory(prefix="dpb") as tmp:
        workdir = Path(tmp)
        if options.write_path_only:
            async with running_stack(workdir, options.workers) as stack:
                writes = await run_write_path(stack, options)
            print_write_path(*writes)
            return
        if options.burst_only:
            print_burst(await run_burst_step(workdir, options, burst))
            return
        print(
            f"{options.count} operations per step, concurrency {options.concurrency}, "
            f"{options.warmup} warm-up operations per step (not counted)"
        )
        async with running_stack(workdir, options.workers) as stack:
            results = await run_all_steps(stack, options, workdir)
            limiter = await measure_rate_limiter(stack)
            writes = await run_write_path(stack, options)
        burst_run = await run_burst_step(workdir, options, burst) if options.burst else None
        scaled: Measurement | None = None
        if options.scaling:
            async with running_stack(workdir, options.workers * 2) as stack:
                scaled = await run_create_and_charge(stack, options)
    print_summary(results)
    print_rate_limiter(limiter, results.retrieve)
    print_write_path(*writes)
    if burst_run:
        print_burst(burst_run)
    if scaled:
        print_scaling(results.create_and_charge, scaled, options.workers)


def phase_seconds(text: str) -> tuple[float, float, float]:
    """`15,20,20` → (15.0, 20.0, 20.0): the calm, burst and after phases' seconds."""
    try:
        calm, burst, after = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("three numbers of seconds: CALM,BURST,AFTER") from None
    if min(calm, burst, after) <= 0:
        raise argparse.ArgumentTypeError("every phase lasts more than 0 s")
    return calm, burst, after


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200, help="measured operations per step")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=20, help="operations before each step, not counted"
    )
    parser.add_argument("--workers", type=int, default=1, help="Durapay worker processes")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="also measure create + charge with twice the worker processes",
    )
    parser.add_argument(
        "--write-events",
        type=int,
        default=1500,
        help="events appended per layout in the write-path step",
    )
    parser.add_argument(
        "--write-path-only",
        action="store_true",
        help="start a stack and run only the write-path step",
    )
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument(
        "--burst-only", action="store_true", help="start a stack and run only the burst step"
    )
    steps.add_argument("--no-burst", action="store_true", help="leave the burst step out")
    parser.add_argument(
        "--burst-phases",
        type=phase_seconds,
        default=(15.0, 20.0, 20.0),
        metavar="CALM,BURST,AFTER",
        help="seconds of each phase of the burst step (default 15,20,20)",
    )
    parser.add_argument(
        "--burst-factor",
        type=float,
        default=3.0,
        help="the burst's arrival rate, × the measured capacity",
    )
    parser.add_argument(
        "--calm-share",
        type=float,
        default=0.4,
        help="the calm arrival rate, × the measured capacity",
    )
    args = parser.parse_args()
    calm, burst, after = args.burst_phases
    started = time.perf_counter()
    # uvloop, as in the workers: the load generator's own loop costs less per request, so
    # less of what the burst times is the client's.
    uvloop.run(
        bench(
            Options(
                args.count,
                args.concurrency,
                args.warmup,
                args.workers,
                args.scaling,
                args.write_events,
                args.write_path_only,
                args.burst_only,
                not args.no_burst,
            ),
            BurstOptions(calm, burst, after, args.calm_share, args.burst_factor),
        )
    )
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    # This process used Temporal clients: skip finalization, where the SDK can abort the
    # process (see cli.shutdown), so `make bench` exits 0 when the bench ran.
    exit_without_finalizing(0)


if __name__ == "__main__":
    main()
