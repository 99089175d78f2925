from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cli.temporal_setup import add_search_attributes

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    # One server per test: the time-skipping clock is shared by everything on a server, so a
    # workflow a test leaves behind (an activity cut off when its worker stopped) would stall
    # time for every later test. Starting one costs about a quarter of a second.
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER)
    ) as environment:
        # The workflows upsert Durapay's search attributes; a server must know them first.
        await add_search_attributes(environment.client, environment.client.namespace)
        yield environment


def new_worker(
    client: Client, *workflows: type, activities: Sequence[Callable[..., Any]]
) -> Worker:
    """A worker on a fresh task queue, so tests never see each other's tasks."""
    return Worker(
        client,
        task_queue=f"tq-{uuid.uuid4()}",
        workflows=list(workflows),
        activities=list(activities),
    )


@asynccontextmanager
async def time_skipping(env: WorkflowEnvironment) -> AsyncIterator[None]:
    """Time skips during the block as it does while a client awaits a workflow's result. The
    test server skips time only then: not while a client awaits an Update (whose handler may
    wait out activity retry backoff or a status query's interval) nor the result of a handle
    from `get_workflow_handle_for`, where the wait would otherwise take real seconds."""
    test_service = env.client.test_service
    await test_service.unlock_time_skipping(UnlockTimeSkippingRequest())
    try:
        yield
    finally:
        await test_service.lock_time_skipping(LockTimeSkippingRequest())
