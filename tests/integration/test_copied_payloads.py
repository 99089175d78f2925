"""Someone who reaches Temporal's port but holds no master key copies encrypted operation inputs
out of histories and sends them again, as raw Updates or update-with-start, on the real stack.

Merchant A's own payments give the attacker a cancel, a capture, a refund and a manual-review
verdict, each as our workers stored it. Sent into merchant B's payments (an open authorization,
a paid payment whose run has closed, a payment in review), every one is refused: nothing reaches
the card network, B's payments, transactions and events do not move, and each refusal is logged
with the workflow it was refused in and counted. B's own refund, sent again into its own payment
under a new Update id, is refused too; under its original id it answers what it answered the
first time and moves nothing. All of it again after `durapay keys rotate`.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import RawValue, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from client import DurapayClient
from core.codec import PAYLOAD_REFUSED
from tests.integration.conftest import CARD_4242, card, create_intent
from tests.integration.helpers import (
    FAST_TIMING_ENV,
    assert_eventually,
    cardnet_client,
    charge,
    database_pool,
    ledger_entries,
    own_stack,
    signed_merchant,
)
from tests.integration.test_worker_metrics import sample
from tests.stack import BIN, RunningStack

pytestmark = pytest.mark.integration

TASK_QUEUE = "durapay-payments"
HELD_CARD = card("4000000000001018")  # held past our timeout: an unknown outcome
COPY_ENV = {
    **FAST_TIMING_ENV,
    # A held charge stays unknown (its `not_found` never believed) and goes to review at once,
    # and stays there for the whole module: the network holds it for longer than the tests.
    "DURAPAY_CARDNET_HOLD_SECONDS": "600",
    "DURAPAY_RECONCILE_HORIZON_SECONDS": "1",
    "DURAPAY_RECONCILE_NOT_FOUND_SAFE_AGE_SECONDS": "3600",
}


@pytest.fixture(scope="module")
def copy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "dpc", extra_env=COPY_ENV) as running:
        yield running


@pytest.fixture(scope="module")
async def intruder(copy_stack: RunningStack) -> Client:
    """A client of their own: Temporal's default converter, no codec, no key."""
    return await Client.connect(copy_stack.temporal_address)


@pytest.fixture(scope="module")
async def copy_db(copy_stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    async with database_pool(copy_stack) as pool:
        yield pool


@pytest.fixture(scope="module")
async def copy_cardnet(copy_stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    async with cardnet_client(copy_stack) as http:
        yield http


@pytest.fixture(scope="module")
async def attacker(copy_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(copy_stack, "Attacker") as client:
        yield client


@pytest.fixture(scope="module")
async def victim(copy_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(copy_stack, "Victim") as client:
        yield client


def _cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "durapay"), *args],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


async def _ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (200,)), response.text
    return response.json()


async def _in_review(durapay: DurapayClient, stack: RunningStack) -> dict[str, Any]:
    """A payment whose held charge went past the horizon: it waits for an operator."""
    intent = await create_intent(durapay)
    await _ok(await charge(durapay, intent["id"], HELD_CARD), 202)

    async def listed() -> bool:
        done = await asyncio.to_thread(_cli, stack, "review", "list")
        return intent["id"] in done.stdout

    await assert_eventually(listed, timeout=30, interval=0.5)
    return intent


async def _stored_inputs(
    temporal: Client, workflow_id: str
) -> dict[str, list[tuple[str, Payload]]]:
    """Every Update input a payment's runs accepted, as stored (by Update name: its id and
    payload), and each run's start input under "start"."""
    found: dict[str, list[tuple[str, Payload]]] = {}
    async for execution in temporal.list_workflows(f'WorkflowId = "{workflow_id}"'):
        history = await temporal.get_workflow_handle(
            workflow_id, run_id=execution.run_id
        ).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                started = event.workflow_execution_started_event_attributes
                found.setdefault("start", []).append(("", started.input.payloads[0]))
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                request = event.workflow_execution_update_accepted_event_attributes.accepted_request
                found.setdefault(request.input.name, []).append(
                    (request.meta.update_id, request.input.args.payloads[0])
                )
    return found


async def _traces(db: asyncpg.Pool, intent_ids: list[str]) -> list[Any]:
    """What the victim's payments hold: status and amounts, transactions, events."""
    return [
        [
            tuple(r)
            for r in await db.fetch(
                "SELECT id, status, amount_capturable, amount_received, amount_refunded, "
                "updated_at FROM payment_intent WHERE id = ANY($1::text[]) ORDER BY id",
                intent_ids,
            )
        ],
        [
            tuple(r)
            for r in await db.fetch(
                "SELECT id, type, status, amount_in_cents FROM transaction "
                "WHERE payment_intent_id = ANY($1::text[]) ORDER BY id",
                intent_ids,
            )
        ],
        [
            tuple(r)
            for r in await db.fetch(
                "SELECT id, type FROM event WHERE payment_intent_id = ANY($1::text[]) ORDER BY seq",
                intent_ids,
            )
        ],
    ]


def _refused(error: BaseException) -> bool:
    cause = getattr(error, "cause", None)
    return isinstance(cause, ApplicationError) and cause.type == PAYLOAD_REFUSED


async def _refusals(stack: RunningStack) -> dict[str, float]:
    url = str(stack.state()["workerMetricsUrls"]["worker-1"])
    async with httpx.AsyncClient(timeout=10) as http:
        exposition = (await http.get(url)).text
    return {
        kind: sample(exposition, "durapay_temporal_payloads_refused_total", kind=kind) or 0.0
        for kind in ("wrong_place", "misaddressed")
    }


@pytest.fixture(scope="module")
async def scene(
    copy_stack: RunningStack, attacker: DurapayClient, victim: DurapayClient, intruder: Client
) -> dict[str, Any]:
    """A's payments, whose stored inputs the attacker copies, and B's, the targets."""
    # A: an authorization canceled, one captured, a payment refunded, a verdict on a review.
    a_canceled = await create_intent(attacker, captureMethod="manual")
    await _ok(await charge(attacker, a_canceled["id"], CARD_4242))
    await _ok(await attacker.post(f"/payment-intents/{a_canceled['id']}/cancel", {}))
    a_captured = await create_intent(attacker, captureMethod="manual")
    await _ok(await charge(attacker, a_captured["id"], CARD_4242))
    await _ok(await attacker.post(f"/payment-intents/{a_captured['id']}/capture", {}))
    a_refunded = await create_intent(attacker, 7000)
    await _ok(await charge(attacker, a_refunded["id"], CARD_4242))
    await _ok(await attacker.post(f"/payment-intents/{a_refunded['id']}/refunds", {}))
    a_reviewed = await _in_review(attacker, copy_stack)
    verdict = await asyncio.to_thread(
        _cli,
        copy_stack,
        "review",
        "resolve",
        a_reviewed["id"],
        "--outcome",
        "failed",
        "--note",
        "checked with the bank",
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    # B: an authorization awaiting capture (its run open), a paid payment partly refunded
    # (its runs closed), a payment in review.
    b_authorized = await create_intent(victim, captureMethod="manual")
    await _ok(await charge(victim, b_authorized["id"], CARD_4242))
    b_paid = await create_intent(victim, 7000)
    await _ok(await charge(victim, b_paid["id"], CARD_4242))
    await _ok(
        await victim.post(f"/payment-intents/{b_paid['id']}/refunds", {"amountInCents": 1000})
    )
    b_reviewed = await _in_review(victim, copy_stack)

    async def b_paid_closed() -> bool:
        described = await intruder.get_workflow_handle(b_paid["id"]).describe()
        return described.status is not None and described.status.name == "COMPLETED"

    await assert_eventually(b_paid_closed, timeout=30)
    copied = {
        intent["id"]: await _stored_inputs(intruder, intent["id"])
        for intent in (a_canceled, a_captured, a_refunded, a_reviewed, b_paid)
    }
    return {
        "a": {
            "cancel": copied[a_canceled["id"]]["cancel"][0],
            "capture": copied[a_captured["id"]]["capture"][0],
            "refund": copied[a_refunded["id"]]["refund"][0],
            "resolve_manual_review": copied[a_reviewed["id"]]["resolve_manual_review"][0],
        },
        "b_own_refund": copied[b_paid["id"]]["refund"][0],
        "b_paid_start": copied[b_paid["id"]]["start"][0][1],
        "b": {"authorized": b_authorized["id"], "paid": b_paid["id"], "reviewed": b_reviewed["id"]},
    }


async def _replay_everything(scene: dict[str, Any], intruder: Client) -> int:
    """Every copied input into B's payments; returns how many were refused by the codec."""
    a, b = scene["a"], scene["b"]
    sent = 0
    for target, update in (
        (b["authorized"], "cancel"),
        (b["authorized"], "capture"),
        (b["reviewed"], "resolve_manual_review"),
    ):
        for update_id in (a[update][0], f"{update}:{uuid.uuid4().hex}"):  # its own id, and new
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await intruder.get_workflow_handle(target).execute_update(
                    update, RawValue(a[update][1]), id=update_id
                )
            assert _refused(rejected.value), rejected.value.cause
            sent += 1
    # A refund into B's closed payment: update-with-start, the start input copied from B's own
    # closed run (it opens a run: a start input is bound to its workflow, which this one is).
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        "PaymentIntentWorkflow",
        RawValue(scene["b_paid_start"]),
        id=b["paid"],
        task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    with pytest.raises(WorkflowUpdateFailedError) as rejected:
        await intruder.execute_update_with_start_workflow(
            "refund",
            RawValue(a["refund"][1]),
            id=f"refund:{uuid.uuid4().hex}",
            start_workflow_operation=start,
        )
    assert _refused(rejected.value), rejected.value.cause
    return sent + 1


async def _replay_own_refund(scene: dict[str, Any], intruder: Client) -> None:
    """B's own refund input, into B's payment again: refused under a new Update id; under its
    own id it is the same operation, which answers as before and moves nothing."""
    update_id, payload = scene["b_own_refund"]
    for new_id in (True, False):
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "PaymentIntentWorkflow",
            RawValue(scene["b_paid_start"]),
            id=scene["b"]["paid"],
            task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        if new_id:
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await intruder.execute_update_with_start_workflow(
                    "refund",
                    RawValue(payload),
                    id=f"refund:{uuid.uuid4().hex}",
                    start_workflow_operation=start,
                )
            assert _refused(rejected.value), rejected.value.cause
        else:
            answer = await intruder.execute_update_with_start_workflow(
                "refund",
                RawValue(payload),
                id=update_id,
                start_workflow_operation=start,
                result_type=RawValue,
            )
            assert isinstance(answer, RawValue)  # ciphertext to the intruder


async def _check_round(
    scene: dict[str, Any],
    stack: RunningStack,
    intruder: Client,
    db: asyncpg.Pool,
    cardnet: httpx.AsyncClient,
) -> None:
    victims = sorted(scene["b"].values())
    before = await _traces(db, victims)
    ledger_before = await ledger_entries(cardnet)
    counted_before = await _refusals(stack)
    logged_before = stack.logs().count("refused a Temporal payload for workflow")

    refused = await _replay_everything(scene, intruder)
    await _replay_own_refund(scene, intruder)

    assert await ledger_entries(cardnet) == ledger_before  # nothing reached the network
    assert await _traces(db, victims) == before  # B's payments, transactions, events
    counted = await _refusals(stack)
    assert counted["wrong_place"] - counted_before["wrong_place"] == refused
    assert counted["misaddressed"] - counted_before["misaddressed"] == 1
    logs = stack.logs()
    assert logs.count("refused a Temporal payload for workflow") - logged_before == refused
    for target in victims:
        assert f"refused a Temporal payload for workflow {target}" in logs


async def test_copied_inputs_are_refused_in_every_other_payment(
    scene: dict[str, Any],
    copy_stack: RunningStack,
    intruder: Client,
    copy_db: asyncpg.Pool,
    copy_cardnet: httpx.AsyncClient,
    victim: DurapayClient,
) -> None:
    await _check_round(scene, copy_stack, intruder, copy_db, copy_cardnet)
    # B's payments still work for B.
    captured = await victim.post(f"/payment-intents/{scene['b']['authorized']}/capture", {})
    assert captured.status_code == 200, captured.text
    assert captured.json()["status"] == "succeeded"
    scene["b"].pop("authorized")  # captured: its copied-in cancel would now be refused anyway


async def test_copied_inputs_are_still_refused_after_a_key_rotation(
    scene: dict[str, Any],
    copy_stack: RunningStack,
    intruder: Client,
    copy_db: asyncpg.Pool,
    copy_cardnet: httpx.AsyncClient,
    victim: DurapayClient,
) -> None:
    rotated = await asyncio.to_thread(_cli, copy_stack, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    # A fresh open authorization for B, under the new key, as the target of cancel/capture.
    fresh = await create_intent(victim, captureMethod="manual")
    await _ok(await charge(victim, fresh["id"], CARD_4242))
    scene["b"]["authorized"] = fresh["id"]
    await _check_round(scene, copy_stack, intruder, copy_db, copy_cardnet)
