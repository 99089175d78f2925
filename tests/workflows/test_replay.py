"""Replay saved histories against today's workflow code: a change that would break a running
payment (non-determinism) fails here, before it reaches a worker.

`histories/baseline_*.json` were recorded by `record_histories.py` from the lean workflow that
retired the pre-release patches (nothing had been released: no run of an older version exists
anywhere). One file per run: a payment whose runs end at rest has several. From this baseline
on, a change to the workflow's commands goes behind `workflow.patched` and comes with a new set
(`python -m tests.workflows.record_histories vN`) recorded before the change.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.card_network import NetworkAnswer
from core.domain import NetworkOutcome
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, start_payment
from workflows.payment_intent import PaymentIntentWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def payment_id_of(saved: str) -> str:
    """The workflow id a saved run had: its payment's id, which the run checks its input
    against (the file name is not it)."""
    started = json.loads(saved)["events"][0]["workflowExecutionStartedEventAttributes"]
    return json.loads(base64.b64decode(started["input"]["payloads"][0]["data"]))[
        "payment_intent_id"
    ]


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_history_replays_on_current_code(path: Path) -> None:
    saved = path.read_text()
    history = WorkflowHistory.from_json(payment_id_of(saved), saved)
    result = await Replayer(workflows=[PaymentIntentWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


async def test_current_code_replays_its_own_history(env: WorkflowEnvironment) -> None:
    unknown = NetworkAnswer(NetworkOutcome.UNKNOWN)
    network = FakeNetwork(
        answers=[NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline"), unknown],
        status_answers=[*[unknown] * 3, NetworkAnswer(NetworkOutcome.APPROVED)],
    )
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await handle.result()
        history = await handle.fetch_history()
    await Replayer(workflows=[PaymentIntentWorkflow]).replay_workflow(history)


def test_histories_are_present() -> None:
    assert len(HISTORIES) >= 11  # a glob that matched nothing must not pass silently
    assert any(p.name.startswith("baseline_") for p in HISTORIES)
