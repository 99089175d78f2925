"""A worker process for the bench's bare workflow, in its own process like Durapay's workers.

    python -m bench.bare_worker --address HOST:PORT --namespace default --task-queue Q [--sandbox]

Started and stopped (SIGTERM) by `bench.charges`; it does not announce readiness itself: the
bench asks the server whether the task queue has pollers.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bench.bare_workflow import BareWorkflow, noop
from cli.shutdown import exit_without_finalizing


async def serve(address: str, namespace: str, task_queue: str, sandbox: bool) -> None:
    # The default data converter: the baseline is bare Temporal, without Durapay's codec.
    client = await Client.connect(address, namespace=namespace)
    # Default worker options, as Durapay's worker uses, and the same workflow runner as
    # Durapay's workers (unsandboxed unless DURAPAY_WORKFLOW_SANDBOX), so the two differ only
    # in what the workflows do.
    runner = SandboxedWorkflowRunner() if sandbox else UnsandboxedWorkflowRunner()
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BareWorkflow],
        activities=[noop],
        graceful_shutdown_timeout=timedelta(seconds=5),
        workflow_runner=runner,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="run the workflow in Temporal's sandbox (Durapay's workers do when "
        "DURAPAY_WORKFLOW_SANDBOX is true)",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.namespace, args.task_queue, args.sandbox))
    # A process that used a Temporal client can abort while the interpreter finalizes
    # (see cli.shutdown); the bench reads our exit code, so keep it truthful.
    exit_without_finalizing(0)


if __name__ == "__main__":
    main()
