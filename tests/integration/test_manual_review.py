"""Past the reconciliation horizon, a payment is flagged for manual review, visibly and loudly,
and the network's late answer still settles it. Runs on its own stack with a 1-second horizon.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from client import DurapayClient
from tests.integration.conftest import card, create_intent
from tests.integration.helpers import (
    FAST_TIMING_ENV,
    assert_eventually,
    charge,
    own_stack,
    signed_merchant,
)
from tests.stack import BIN, RunningStack

pytestmark = pytest.mark.integration

REVIEW_ENV = {
    **FAST_TIMING_ENV,
    # The network holds 1018 for 8 s; our horizon is 1 s: a review opens, then the hold ends.
    "DURAPAY_CARDNET_HOLD_SECONDS": "8",
    "DURAPAY_RECONCILE_HORIZON_SECONDS": "1",
}
# What `durapay review resolve` prints when the workflow's validator refuses the verdict (the
# Update's failure cause: its error type, then its message).
REFUSED_NOT_IN_REVIEW = (
    "durapay review: refused: IllegalTransition: this payment is not waiting for a manual review\n"
)


@pytest.fixture(scope="module")
def review_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "dpr", extra_env=REVIEW_ENV) as running:
        yield running


@pytest.fixture
async def merchant_client(review_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(review_stack) as durapay:
        yield durapay


def _review_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "durapay"), "review", *args],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


async def test_unknown_outcome_past_the_horizon_opens_a_review_that_the_network_closes(
    review_stack: RunningStack, merchant_client: DurapayClient
) -> None:
    intent = await create_intent(merchant_client)
    started = time.monotonic()
    response = await charge(merchant_client, intent["id"], card("4000000000001018"))
    assert response.status_code == 202, response.text

    # Operators see it three ways: the CLI, the Temporal search attribute, the worker log.
    async def listed_in_cli() -> str | None:
        done = await asyncio.to_thread(_review_cli, review_stack, "list")
        return done.stdout if intent["id"] in done.stdout and done.returncode == 2 else None

    output = await assert_eventually(
        listed_in_cli,
        timeout=15,
        interval=0.5,
        message="the review never showed in `durapay review list`",
    )
    assert response.json()["networkReference"] in output
    temporal = await review_stack.temporal_client()
    intent_id = intent["id"]
    query = f'DurapayManualReview = true AND WorkflowId = "{intent_id}"'
    assert await assert_eventually(lambda: _count(temporal, query), timeout=10)
    assert "needs manual review" in review_stack.logs()
    # Meanwhile the merchant sees the truth: still processing, never a guess.
    current = (await merchant_client.get(f"/payment-intents/{intent['id']}")).json()
    assert current["status"] == "processing"

    # The hold ends, the next status query learns the approval, and the review closes itself.
    async def settled() -> dict[str, Any] | None:
        body = (await merchant_client.get(f"/payment-intents/{intent['id']}")).json()
        return body if body["status"] == "succeeded" else None

    final = await assert_eventually(settled, timeout=30, interval=0.5)
    print(f"\n[review] opened and settled {time.monotonic() - started:.1f} s after the charge")
    assert final["transactions"][0]["reconciled"] is True
    assert await assert_eventually(
        lambda: _count(temporal, query.replace("true", "false")), timeout=10
    )
    assert intent["id"] not in _review_cli(review_stack, "list").stdout
    db = await asyncpg.connect(review_stack.database_url)
    try:
        row = await db.fetchrow(
            "SELECT manual_review_since, manual_review_resolved_at "
            "FROM payment_intent WHERE id = $1",
            intent["id"],
        )
    finally:
        await db.close()
    assert row["manual_review_since"] is not None
    assert row["manual_review_resolved_at"] > row["manual_review_since"]


async def test_resolve_refuses_a_payment_that_is_not_in_review(
    review_stack: RunningStack, merchant_client: DurapayClient
) -> None:
    intent = await create_intent(merchant_client)
    assert (
        await charge(merchant_client, intent["id"], card("4242424242424242"))
    ).status_code == 200
    done = await asyncio.to_thread(
        _review_cli, review_stack, "resolve", intent["id"], "--outcome", "failed", "--note", "test"
    )
    # The workflow's validator refused the verdict (not a crash that also exits 1).
    assert (done.returncode, done.stdout) == (1, REFUSED_NOT_IN_REVIEW), done.stderr
    assert "Traceback" not in done.stderr
    # A refused verdict changes nothing: the charge stays succeeded.
    current = (await merchant_client.get(f"/payment-intents/{intent['id']}")).json()
    assert current["status"] == "succeeded"


async def _count(temporal: Client, query: str) -> bool:
    return (await temporal.count_workflows(query)).count == 1
