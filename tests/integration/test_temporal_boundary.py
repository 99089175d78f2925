"""Temporal is not a back door around the API's signed requests.

Whoever reaches Temporal's port can send Updates of their own. On the real stack: one in clear
(no codec, a client of their own) naming another merchant's card is refused by the workers —
nothing is recorded, nothing reaches the network, the intent does not move, and the merchant's
next signed request goes through — whether or not the payment has a run open. And a card token
that is not the intent's merchant's is refused before anything is written or sent, even in an
Update encrypted under our key.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.card_network import AuthorizeInput, CardNetworkActivities
from client import DurapayClient
from core.codec import PAYLOAD_REFUSED
from core.crypto import Cipher
from core.db.session import create_engine, session_factory
from core.domain import CaptureMethod, CardSummary, IntentStatus, transaction_id_for
from core.errors import ErrorType
from core.keyring import Purpose
from tests.integration.conftest import CARD_4242, card, create_intent
from tests.integration.helpers import charge, ledger_entries, signed_merchant
from tests.stack import RunningStack
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import (
    CancelInput,
    CaptureInput,
    ChargeInput,
    PaymentIntentInput,
    addressed,
)

pytestmark = pytest.mark.integration

TASK_QUEUE = "durapay-payments"  # the stack's (DURAPAY_TASK_QUEUE is not set by tests)
# Another merchant's customer: the card a forged Update would like charged.
VICTIM_CARD = card("5555555555554444")


@pytest.fixture(scope="module")
async def foreign_token(stack: RunningStack, db: asyncpg.Pool) -> str:
    """A real vault token of another merchant (its customer paid it a visit)."""
    async with signed_merchant(stack, "Someone else") as other:
        intent = await create_intent(other)
        response = await charge(other, intent["id"], VICTIM_CARD)
        assert response.status_code == 200, response.text
    token = await db.fetchval(
        "SELECT card_token_id FROM transaction WHERE id = $1", response.json()["id"]
    )
    assert token is not None
    return str(token)


@pytest.fixture(scope="module")
async def intruder(stack: RunningStack) -> Client:
    """A client of their own: Temporal's default converter, no codec, no key."""
    return await Client.connect(stack.temporal_address)


def forged_start(intent: dict[str, Any], merchant_id: str) -> WithStartWorkflowOperation[Any, Any]:
    payment = PaymentIntentInput(
        intent["id"],
        merchant_id,
        intent["amountInCents"],
        intent["currency"],
        CaptureMethod(intent["captureMethod"]),
    )
    return WithStartWorkflowOperation(
        PaymentIntentWorkflow.run,
        payment,
        id=intent["id"],
        task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )


def forged_charge(token: str) -> ChargeInput:
    return ChargeInput(card_token_id=token, card=CardSummary("mastercard", "4444", 12, 2030))


async def traces(
    db: asyncpg.Pool, cardnet: httpx.AsyncClient, intent_id: str
) -> tuple[list[tuple[str, str]], list[str], int]:
    """What a payment left behind: its transactions, its events, and the network's ledger."""
    transactions = [
        (r["id"], r["card_token_id"])
        for r in await db.fetch(
            "SELECT id, card_token_id FROM transaction WHERE payment_intent_id = $1 ORDER BY id",
            intent_id,
        )
    ]
    events = [
        r["type"]
        for r in await db.fetch(
            "SELECT type FROM event WHERE payment_intent_id = $1 ORDER BY seq", intent_id
        )
    ]
    return transactions, events, len(await ledger_entries(cardnet))


async def status_of(durapay: DurapayClient, intent_id: str) -> str:
    response = await durapay.get(f"/payment-intents/{intent_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def refused(error: BaseException) -> bool:
    cause = getattr(error, "cause", None)
    return isinstance(cause, ApplicationError) and cause.type == PAYLOAD_REFUSED


async def test_a_plaintext_charge_with_no_run_open_is_refused_and_the_merchant_still_charges(
    durapay: DurapayClient,
    merchant: dict[str, Any],
    intruder: Client,
    foreign_token: str,
    temporal: Client,
    db: asyncpg.Pool,
    cardnet: httpx.AsyncClient,
) -> None:
    intent = await create_intent(durapay)
    before = await traces(db, cardnet, intent["id"])
    update_id = f"charge:{uuid.uuid4().hex}"
    start = forged_start(intent, merchant["id"])
    # Update-with-start: the workers refuse the run's input, so the run fails at once and the
    # Update with it.
    with pytest.raises(RPCError, match="aborted by closing workflow"):
        await intruder.execute_update_with_start_workflow(
            PaymentIntentWorkflow.confirm_charge,
            forged_charge(foreign_token),
            id=update_id,
            start_workflow_operation=start,
        )
    with pytest.raises(RPCError):  # the start shares the operation's fate
        await start.workflow_handle()

    assert await traces(db, cardnet, intent["id"]) == before
    assert await ledger_entries(cardnet, transaction_id_for(intent["id"], update_id)) == []
    assert await status_of(durapay, intent["id"]) == IntentStatus.CREATED.value
    failed = await temporal.get_workflow_handle(intent["id"]).describe()
    assert failed.status is not None and failed.status.name == "FAILED"

    # The next signed charge opens a fresh run and goes through.
    response = await charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    transactions, events, _ = await traces(db, cardnet, intent["id"])
    assert [token for _, token in transactions] != [foreign_token]
    assert events == ["payment.created", "payment.processing", "payment.succeeded"]


async def test_plaintext_updates_to_an_open_run_are_refused_and_the_merchant_still_captures(
    durapay: DurapayClient,
    intruder: Client,
    foreign_token: str,
    db: asyncpg.Pool,
    cardnet: httpx.AsyncClient,
) -> None:
    # An authorization awaiting its capture keeps its run open.
    intent = await create_intent(durapay, captureMethod="manual")
    authorized = await charge(durapay, intent["id"], CARD_4242)
    assert authorized.status_code == 200, authorized.text
    before = await traces(db, cardnet, intent["id"])
    handle = intruder.get_workflow_handle(intent["id"])
    update: Any  # each pair has its own types (mypy would take their union)
    for update, argument in (
        (PaymentIntentWorkflow.capture, CaptureInput()),
        (PaymentIntentWorkflow.cancel, CancelInput()),
        (PaymentIntentWorkflow.confirm_charge, forged_charge(foreign_token)),
    ):
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(update, argument)
        assert refused(rejected.value), rejected.value.cause

    assert await traces(db, cardnet, intent["id"]) == before
    assert await status_of(durapay, intent["id"]) == IntentStatus.REQUIRES_CAPTURE.value
    captured = await durapay.post(f"/payment-intents/{intent['id']}/capture", {})
    assert captured.status_code == 200, captured.text
    assert captured.json()["status"] == "succeeded"


@pytest.mark.parametrize("whose", ["another-merchants", "nobodys"])
async def test_an_encrypted_charge_naming_a_card_not_the_merchants_is_refused_before_recording(
    whose: str,
    durapay: DurapayClient,
    merchant: dict[str, Any],
    foreign_token: str,
    temporal: Client,
    db: asyncpg.Pool,
    cardnet: httpx.AsyncClient,
) -> None:
    """Even under our key (a bug, or someone holding it), the record refuses the token: no
    pending row naming another merchant's card, no foreign-key violation retried for ever under
    the payment's lock."""
    token = foreign_token if whose == "another-merchants" else "card_does_not_exist_000000"
    intent = await create_intent(durapay)
    before = await traces(db, cardnet, intent["id"])
    update_id = f"charge:{uuid.uuid4().hex}"
    forged = addressed(
        forged_charge(token),
        PaymentIntentWorkflow.confirm_charge,
        payment_intent_id=intent["id"],
        update_id=update_id,
    )
    with pytest.raises(WorkflowUpdateFailedError) as rejected:
        async with asyncio.timeout(30):  # retried for ever, never answered, it would time out
            await temporal.execute_update_with_start_workflow(
                PaymentIntentWorkflow.confirm_charge,
                forged,
                id=update_id,
                start_workflow_operation=forged_start(intent, merchant["id"]),
            )
    cause = rejected.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorType.ILLEGAL_TRANSITION
    assert await traces(db, cardnet, intent["id"]) == before
    assert await status_of(durapay, intent["id"]) == IntentStatus.CREATED.value

    response = await charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"


@pytest.fixture
async def adapter(
    stack: RunningStack,
) -> AsyncIterator[tuple[CardNetworkActivities, list[httpx.Request]]]:
    """The network adapter on the stack's database and key, its network a recorder."""
    sent: list[httpx.Request] = []

    def network(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503, json={"error": "network_unavailable"})

    engine = create_engine(
        stack.database_url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=1
    )
    sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
    async with httpx.AsyncClient(transport=httpx.MockTransport(network)) as http:
        yield (
            CardNetworkActivities(
                http=http,
                sessions=sessions,
                vault=Cipher(stack.key_ring(), Purpose.VAULT),
                base_url="http://network",
                timeout_seconds=1,
            ),
            sent,
        )
    await engine.dispose()


async def test_the_adapter_sends_only_the_card_of_the_charges_own_merchant(
    adapter: tuple[CardNetworkActivities, list[httpx.Request]],
    durapay: DurapayClient,
    foreign_token: str,
    db: asyncpg.Pool,
    stack: RunningStack,
) -> None:
    network, sent = adapter
    intent = await create_intent(durapay)
    txn = (await charge(durapay, intent["id"], CARD_4242)).json()
    own_token = await db.fetchval("SELECT card_token_id FROM transaction WHERE id = $1", txn["id"])
    for reference, token in (
        (txn["id"], foreign_token),  # another merchant's card
        ("txn_never_recorded_00000000", own_token),
    ):  # no recorded attempt
        with pytest.raises(ApplicationError) as refused_token:
            await network.authorize_card(AuthorizeInput(reference, token, 2499, "usd", True))
        assert (refused_token.value.type, refused_token.value.non_retryable) == (
            ErrorType.VAULT_TOKEN_MISSING,
            True,
        )
        assert "nothing was sent" in refused_token.value.message
    # The charge succeeded, so its card number is gone: a late retry of its authorization
    # (which the workflow reads as "unknown", never as "nothing happened") sends nothing.
    with pytest.raises(ApplicationError) as deleted:
        await network.authorize_card(AuthorizeInput(txn["id"], own_token, 2499, "usd", True))
    assert (deleted.value.type, deleted.value.non_retryable) == (
        ErrorType.VAULT_TOKEN_MISSING,
        True,
    )
    assert "nothing was sent" in deleted.value.message
    assert sent == []
    # The merchant's own card on its own recorded charge, while it is still held (an attempt
    # not answered yet), does go out (here to a network that answers "unavailable": retried
    # by Temporal with the same reference).
    await db.execute(
        "UPDATE card_token SET pan_ciphertext = $2 WHERE id = $1",
        own_token,
        Cipher(stack.key_ring(), Purpose.VAULT).encrypt(
            CARD_4242["number"].encode(), context=own_token
        ),
    )
    with pytest.raises(ApplicationError, match="network_unavailable"):
        await network.authorize_card(AuthorizeInput(txn["id"], own_token, 2499, "usd", True))
    assert [request.url.path for request in sent] == ["/v1/operations"]
    assert sent[0].read().decode().count(CARD_4242["number"]) == 1
