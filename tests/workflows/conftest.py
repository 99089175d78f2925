from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(TEST_SERVER)) as environment:
        yield environment


def new_worker(client: Client, *workflows: type,
               activities: Sequence[Callable[..., Any]]) -> Worker:
    """A worker on a fresh task queue, so tests never see each other's tasks."""
    return Worker(client, task_queue=f"tq-{uuid.uuid4()}", workflows=list(workflows),
                  activities=list(activities))
