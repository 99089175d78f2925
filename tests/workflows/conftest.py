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

from cli.temporal_setup import add_search_attributes

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    # One server per test: the time-skipping clock is shared by everything on a server, so a
    # workflow a test leaves behind (an activity cut off when its worker stopped) would stall
    # time for every later test. Starting one costs about a quarter of a second.
    async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(TEST_SERVER)) as environment:
        # The workflows upsert Durapay's search attributes; a server must know them first.
        await add_search_attributes(environment.client, environment.client.namespace)
        yield environment


def new_worker(client: Client, *workflows: type,
               activities: Sequence[Callable[..., Any]]) -> Worker:
    """A worker on a fresh task queue, so tests never see each other's tasks."""
    return Worker(client, task_queue=f"tq-{uuid.uuid4()}", workflows=list(workflows),
                  activities=list(activities))
