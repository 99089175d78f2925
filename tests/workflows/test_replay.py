"""Replay saved histories against today's workflow code: a change that would break a running
payment (non-determinism) fails here, before it reaches a worker.

`histories/v1_*.json` were recorded from the first PaymentIntentWorkflow (before search
attribute upserts, manual review and webhook fan-out, all behind `workflow.patched`);
`v2_*.json` from the version with those (webhook plans, search attributes, a manual review);
`v3_*.json` from the payment lifecycle (manual capture with an unknown answer reconciled,
refunds, authorization expiry, the refund window), recorded with tests/workflows/fakes.py;
`v4_*.json` from the money-safety version (an unexpected error reconciled, a verdict the network
refuses, an expiry void declined until a review), recorded by `record_histories.py`.
Record a new set (`python -m tests.workflows.record_histories vN`) before each change to the
workflow's commands.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_history_replays_on_current_code(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=[PaymentIntentWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_current_code_replays_its_own_history(env: WorkflowEnvironment) -> None:
    unknown = NetworkAnswer(NetworkOutcome.UNKNOWN)
    network = FakeNetwork(answers=[NetworkAnswer(NetworkOutcome.DECLINED, "generic_decline"),
                                   unknown],
                          status_answers=[unknown] * 3 + [NetworkAnswer(NetworkOutcome.APPROVED)])
    async with new_worker(env.client, PaymentIntentWorkflow,
                          activities=network.activities()) as worker:
        handle = await start_payment(env, worker.task_queue)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await handle.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        await handle.result()
        history = await handle.fetch_history()
    await Replayer(workflows=[PaymentIntentWorkflow]).replay_workflow(history)


def test_histories_are_present() -> None:
    assert len(HISTORIES) >= 11  # a glob that matched nothing must not pass silently
