"""Replay saved WebhookDeliveryWorkflow histories against today's code.

A delivery runs for up to 3 days, so a worker deployed mid-delivery replays histories written by
the code before it. `histories/delivery/<prefix>_*.json` are recorded by
`record_delivery_histories.py`: `baseline_*` by the code as first released, then one set per
later patch. A change to the delivery's commands that is not behind `workflow.patched` fails
here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.webhook_delivery import WebhookDeliveryWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories" / "delivery").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_delivery_history_replays_on_current_code(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=[WebhookDeliveryWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


def test_delivery_histories_are_present() -> None:
    # A glob that matched nothing must not pass silently.
    prefixes = {p.stem.split("_")[0] for p in HISTORIES}
    assert prefixes >= {"baseline"}, prefixes
    assert len(HISTORIES) >= 3
