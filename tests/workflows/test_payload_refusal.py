"""What the workers do with a message that is not encrypted under our key (someone who reached
Temporal's port with a client of their own): the SDK's behaviour the codec relies on, checked on
the time-skipping server with the real PaymentIntentWorkflow and mocked activities.

A refused Update is rejected (nothing reaches history, the run goes on), a refused start input
fails its run at once (the next legitimate update-with-start opens a fresh one), and a refused
activity input never reaches the activity's code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.card_network import AuthorizeInput, NetworkAnswer
from core import search_attributes
from core.codec import PAYLOAD_REFUSED, data_converter
from core.domain import CaptureMethod, CardSummary, IntentStatus, NetworkOutcome
from tests.workflows.conftest import new_worker
from tests.workflows.fakes import CARD, FakeNetwork, start_payment
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    CaptureInput,
    CarriedState,
    ChargeInput,
    Money,
    PaymentIntentInput,
    addressed,
)

KEY = os.urandom(32)
FORGED = ChargeInput(card_token_id="card_forged", card=CardSummary("visa", "4242", 12, 2030))
APPROVED = NetworkAnswer(NetworkOutcome.APPROVED)


def ours(env: WorkflowEnvironment) -> Client:
    """A client as Durapay's processes have it (the same server and time-skipping hooks)."""
    config = env.client.config()
    config["data_converter"] = data_converter(KEY)
    return Client(**config)


def update_with_start(
    client: Client, payment: PaymentIntentInput, task_queue: str
) -> WithStartWorkflowOperation[Any, Any]:
    return WithStartWorkflowOperation(
        PaymentIntentWorkflow.run,
        payment,
        id=payment.payment_intent_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )


def addressed_to(payment: PaymentIntentInput, update: Any, argument: Any) -> tuple[Any, str]:
    """`argument` as the API sends it to `update`, and the Update id it is sent under."""
    update_id = f"{update.__name__}:{uuid.uuid4().hex}"
    return addressed(
        argument, update, payment_intent_id=payment.payment_intent_id, update_id=update_id
    ), update_id


def refused(error: BaseException) -> bool:
    """Whether the error (or one of its causes) is the codec's refusal."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ApplicationError) and current.type == PAYLOAD_REFUSED:
            return True
        current = current.__cause__ or getattr(current, "cause", None)
    return False


async def test_a_plaintext_update_to_an_open_run_is_rejected_and_the_run_goes_on(
    env: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[APPROVED])
    client = ours(env)
    async with new_worker(client, PaymentIntentWorkflow, activities=network.activities()) as worker:
        payment = (
            await start_payment(env, worker.task_queue, capture_method=CaptureMethod.MANUAL)
        ).input
        # The merchant's authorization: the run stays open, holding it until its capture.
        charge, charge_id = addressed_to(payment, PaymentIntentWorkflow.confirm_charge, CARD)
        authorized = await client.execute_update_with_start_workflow(
            PaymentIntentWorkflow.confirm_charge,
            charge,
            id=charge_id,
            start_workflow_operation=update_with_start(client, payment, worker.task_queue),
        )
        assert authorized.intent_status is IntentStatus.REQUIRES_CAPTURE

        foreign = env.client.get_workflow_handle(payment.payment_intent_id)  # no codec
        update: Any  # each pair has its own types (mypy would take their union)
        for update, argument in (
            (PaymentIntentWorkflow.capture, CaptureInput()),
            (PaymentIntentWorkflow.confirm_charge, FORGED),
        ):
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await foreign.execute_update(update, argument)
            assert refused(rejected.value), rejected.value.cause

        mine = client.get_workflow_handle(payment.payment_intent_id)
        events = (await mine.fetch_history()).events
        assert (
            await mine.query(PaymentIntentWorkflow.current_status) is IntentStatus.REQUIRES_CAPTURE
        )
        assert network.operations == [] and len(network.calls) == 1
        # Rejected Updates leave no trace in history: only the merchant's one was accepted.
        accepted = [
            e
            for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
        assert len(accepted) == 1

        capture, capture_id = addressed_to(payment, PaymentIntentWorkflow.capture, CaptureInput())
        captured = await mine.execute_update(PaymentIntentWorkflow.capture, capture, id=capture_id)
    assert captured.intent_status is IntentStatus.SUCCEEDED
    assert [kind for kind, _ in network.operations] == ["capture"]


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """The local dev server: the time-skipping one fails its own RPC (a NullPointerException in
    waitForUpdateResponse) when a run closes before answering an Update."""
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_extra_args=search_attributes.registration_flags(),
        dev_server_log_level="error",
    )
    yield environment
    await environment.shutdown()


async def test_a_plaintext_update_with_start_fails_its_run_and_the_next_charge_opens_a_new_one(
    dev_server: WorkflowEnvironment,
) -> None:
    network = FakeNetwork(answers=[APPROVED])
    client = ours(dev_server)
    async with new_worker(client, PaymentIntentWorkflow, activities=network.activities()) as worker:
        payment = (await start_payment(dev_server, worker.task_queue)).input
        forged_start = update_with_start(dev_server.client, payment, worker.task_queue)
        with pytest.raises(RPCError, match="aborted by closing workflow"):
            await dev_server.client.execute_update_with_start_workflow(
                PaymentIntentWorkflow.confirm_charge, FORGED, start_workflow_operation=forged_start
            )
        with pytest.raises(RPCError):  # the start shares the operation's fate
            await forged_start.workflow_handle()
        forged_run = client.get_workflow_handle(payment.payment_intent_id)
        forged_run_id = (await forged_run.describe()).run_id
        with pytest.raises(WorkflowFailureError) as failed:
            await forged_run.result()
        assert refused(failed.value)
        assert network.attempts == [] and network.calls == []

        start = update_with_start(client, payment, worker.task_queue)
        charge, charge_id = addressed_to(payment, PaymentIntentWorkflow.confirm_charge, CARD)
        charged = await client.execute_update_with_start_workflow(
            PaymentIntentWorkflow.confirm_charge,
            charge,
            id=charge_id,
            start_workflow_operation=start,
        )
        assert charged.transaction_status == "succeeded"
        assert (await start.workflow_handle()).result_run_id != forged_run_id
    assert [a.card_token_id for a in network.attempts] == [CARD.card_token_id]


@workflow.defn(sandboxed=False)
class RogueWorkflow:
    """What a rogue worker polling our task queue could command: our activity, input in clear."""

    @workflow.run
    async def run(self, task_queue: str) -> str:
        try:
            await workflow.execute_activity(
                "authorize_card",
                AuthorizeInput("txn_rogue", "card_forged", 2499, "usd", True),
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as error:
            return repr(error.cause.__cause__ if error.cause else None)
        return "ran"


async def test_an_activity_scheduled_with_an_input_in_clear_never_runs(
    env: WorkflowEnvironment,
) -> None:
    calls: list[AuthorizeInput] = []

    @activity.defn(name="authorize_card")
    async def authorize_card(request: AuthorizeInput) -> NetworkAnswer:
        calls.append(request)
        return APPROVED

    activities_queue = f"tq-{uuid.uuid4()}"
    async with (
        Worker(ours(env), task_queue=activities_queue, activities=[authorize_card]),
        new_worker(env.client, RogueWorkflow, activities=[]) as rogue,
    ):
        outcome = await env.client.execute_workflow(
            RogueWorkflow.run,
            activities_queue,
            id=f"rogue-{uuid.uuid4()}",
            task_queue=rogue.task_queue,
            # Bounded: an activity that did run answers in ciphertext the rogue cannot read.
            execution_timeout=timedelta(seconds=20),
        )
    assert calls == []
    assert PAYLOAD_REFUSED in outcome, outcome


async def test_an_input_issued_for_another_payment_update_or_id_is_refused(
    env: WorkflowEnvironment,
) -> None:
    """Inputs are encrypted and bound to their workflow, so only an earlier input of this very
    payment could arrive here: the validators still refuse one not addressed to this payment,
    this Update name and this Update id (what a copy sent under a new id would be)."""
    network = FakeNetwork(answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        payment = await start_payment(env, worker.task_queue, capture_method=CaptureMethod.MANUAL)
        await payment.execute_update(PaymentIntentWorkflow.confirm_charge, CARD)
        run = payment.latest()
        intent = payment.id
        capture = PaymentIntentWorkflow.capture
        for argument, update_id in (
            (
                addressed(
                    CaptureInput(), capture, payment_intent_id="pi_another", update_id="capture:k"
                ),
                "capture:k",
            ),
            (
                addressed(
                    CaptureInput(),
                    PaymentIntentWorkflow.refund,
                    payment_intent_id=intent,
                    update_id="capture:k",
                ),
                "capture:k",
            ),
            (
                addressed(CaptureInput(), capture, payment_intent_id=intent, update_id="capture:k"),
                "capture:copied-under-a-new-id",
            ),
            (CaptureInput(), "capture:k"),
        ):  # not addressed at all
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await run.execute_update(capture, argument, id=update_id)
            assert refused(rejected.value), rejected.value.cause
        assert network.operations == []
        assert (
            await run.query(PaymentIntentWorkflow.current_status) is IntentStatus.REQUIRES_CAPTURE
        )
        captured = await run.execute_update(
            capture,
            addressed(CaptureInput(), capture, payment_intent_id=intent, update_id="capture:k"),
            id="capture:k",
        )
    assert captured.intent_status is IntentStatus.SUCCEEDED
    assert [kind for kind, _ in network.operations] == ["capture"]


@pytest.mark.parametrize("forged", ["another-payment", "carried-into-a-fresh-run"])
async def test_a_start_input_not_written_for_its_run_fails_the_run_before_anything_runs(
    forged: str, env: WorkflowEnvironment
) -> None:
    network = FakeNetwork(answers=[APPROVED])
    async with new_worker(
        env.client, PaymentIntentWorkflow, activities=network.activities()
    ) as worker:
        payment = (await start_payment(env, worker.task_queue)).input
        if forged == "another-payment":
            start_input = dataclasses.replace(payment, payment_intent_id="pi_another")
        else:
            start_input = dataclasses.replace(
                payment,
                carried=CarriedState(
                    IntentStatus.REQUIRES_CAPTURE, money=Money("txn_old", None, 2499)
                ),
            )
        handle = await env.client.start_workflow(
            PaymentIntentWorkflow.run,
            start_input,
            id=payment.payment_intent_id,
            task_queue=worker.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert refused(failed.value)
    assert network.calls == [] and network.operations == []
