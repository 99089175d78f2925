"""Charges end to end: API -> workflow (Update) -> activities -> simulator over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import asyncpg
import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowExecutionStatus

from client import DurapayClient
from core.codec import ENCODING, PayloadEncryptionCodec
from tests.integration.conftest import CARD_4242, card, create_intent
from tests.integration.helpers import ledger_entries, settled_intent
from tests.stack import RunningStack

PAN = "4242424242424242"
DECLINE_PAN = "4000000000000002"
HELD_APPROVE_PAN = "4000000000001018"


async def _charge(
    durapay: DurapayClient, intent_id: str, card_body: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    return await durapay.post(
        f"/payment-intents/{intent_id}/transactions",
        {"type": "charge", "card": card_body},
        **kwargs,
    )


async def _ledger(cardnet: httpx.AsyncClient, reference: str) -> list[dict[str, Any]]:
    entries = (await cardnet.get("/ledger")).json()["data"]
    return [e for e in entries if e["reference"] == reference]


async def test_4242_is_charged_and_succeeds(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay)
    response = await _charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    txn = response.json()
    assert txn["id"].startswith("txn_")
    assert txn == {
        **txn,
        "object": "transaction",
        "paymentIntentId": intent["id"],
        "type": "charge",
        "amountInCents": 2499,
        "currency": "usd",
        "status": "succeeded",
        "failureCode": None,
        "declineCode": None,
        "reconciled": False,
        "card": {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2030},
    }
    assert txn["networkReference"]
    final = (await durapay.get(f"/payment-intents/{intent['id']}")).json()
    assert final["status"] == "succeeded"
    assert final["amountReceived"] == 2499
    assert [t["id"] for t in final["transactions"]] == [txn["id"]]
    ledger = await _ledger(cardnet, txn["networkReference"])
    assert [(e["type"], e["status"], e["amountInCents"]) for e in ledger] == [
        ("charge", "approved", 2499)
    ]


async def test_decline_is_402_then_another_card_succeeds(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay, amount=1000)
    declined = await _charge(durapay, intent["id"], card(DECLINE_PAN))
    assert declined.status_code == 402, declined.text
    error = declined.json()["error"]
    assert error["type"] == "card_error"
    assert error["declineCode"] == "generic_decline"
    assert error["transaction"]["status"] == "failed"
    assert error["transaction"]["declineCode"] == "generic_decline"
    assert DECLINE_PAN not in declined.text
    after_decline = (await durapay.get(f"/payment-intents/{intent['id']}")).json()
    assert after_decline["status"] == "failed"
    assert after_decline["lastError"]["declineCode"] == "generic_decline"

    retried = await _charge(durapay, intent["id"], CARD_4242)
    assert retried.status_code == 200, retried.text
    final = (await durapay.get(f"/payment-intents/{intent['id']}")).json()
    assert final["status"] == "succeeded"
    assert final["lastError"] is None
    assert [t["status"] for t in final["transactions"]] == ["failed", "succeeded"]

    events = (await durapay.get(f"/payment-intents/{intent['id']}/events")).json()["data"]
    assert [e["type"] for e in events] == [
        "payment.created",
        "payment.processing",
        "payment.failed",
        "payment.processing",
        "payment.succeeded",
    ]
    last = events[-1]["data"]
    assert {
        k: last[k] for k in ("paymentId", "amountInCents", "currency", "status", "transactionId")
    } == {
        "paymentId": intent["id"],
        "amountInCents": 1000,
        "currency": "usd",
        "status": "succeeded",
        "transactionId": retried.json()["id"],
    }  # docs/api.md's event data
    assert last["previous"]["status"] == "processing" and last["amountReceived"] == 1000
    assert last["transaction"] == {
        "id": retried.json()["id"],
        "type": "charge",
        "status": "succeeded",
        "amountInCents": 1000,
    }
    assert [e["intentSequence"] for e in events] == [1, 2, 3, 4, 5]
    assert all(e["id"].startswith("evt_") for e in events)
    declined_ref = error["transaction"]["networkReference"]
    assert [e["status"] for e in await _ledger(cardnet, declined_ref)] == ["declined"]


async def test_charging_a_succeeded_intent_is_409_and_charges_nothing(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay)
    assert (await _charge(durapay, intent["id"], CARD_4242)).status_code == 200
    ledger_before = len((await cardnet.get("/ledger")).json()["data"])
    again = await _charge(durapay, intent["id"], CARD_4242)
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "conflict"
    assert len((await cardnet.get("/ledger")).json()["data"]) == ledger_before


async def test_invalid_cards_are_400_before_anything_is_sent(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    intent = await create_intent(durapay)
    ledger_before = len((await cardnet.get("/ledger")).json()["data"])
    cases = {
        "card.number": [card("4242424242424241"), card("4242"), card("4242abcd42424242")],
        "card.expYear": [card(PAN, expYear=2020)],
        "card.expMonth": [card(PAN, expMonth=13)],
        "card.cvc": [card(PAN, cvc="12"), card(PAN, cvc="12345"), card(PAN, cvc="abc")],
    }
    for param, cards in cases.items():
        for bad in cards:
            response = await _charge(durapay, intent["id"], bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error"]["param"] == param
            assert bad["number"] not in response.text
    missing = await durapay.post(
        f"/payment-intents/{intent['id']}/transactions", {"type": "charge"}
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "card"
    valid = await _charge(durapay, intent["id"], CARD_4242)
    assert valid.status_code == 200  # the intent was untouched by the bad requests
    assert len((await cardnet.get("/ledger")).json()["data"]) == ledger_before + 1
    tokens = await db.fetchval(
        "SELECT count(*) FROM card_token ct JOIN payment_intent pi "
        "ON pi.merchant_id = ct.merchant_id WHERE pi.id = $1",
        intent["id"],
    )
    assert tokens == 1


async def test_snake_case_expiry_is_accepted(durapay: DurapayClient) -> None:
    intent = await create_intent(durapay)
    response = await _charge(
        durapay, intent["id"], {"number": PAN, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    )
    assert response.status_code == 200, response.text


async def test_idempotent_charge_replays_the_same_transaction(
    durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay)
    first = await _charge(durapay, intent["id"], CARD_4242, idempotency_key="charge-1")
    again = await _charge(durapay, intent["id"], CARD_4242, idempotency_key="charge-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert len(await _ledger(cardnet, first.json()["networkReference"])) == 1


async def test_workflow_is_visible_and_history_holds_no_card_data(
    stack: RunningStack, durapay: DurapayClient, temporal: Client, db: asyncpg.Pool
) -> None:
    intent = await create_intent(durapay)
    cvc = "7319"
    response = await _charge(durapay, intent["id"], card(PAN, cvc=cvc))
    assert response.status_code == 200
    handle = temporal.get_workflow_handle(intent["id"])
    description = await handle.describe()
    assert description.workflow_type == "PaymentIntentWorkflow"
    # A succeeded payment's workflow stays open for refunds: ask it, don't wait for its end.
    status = await handle.query("current_status")
    assert description.status in (
        WorkflowExecutionStatus.RUNNING,
        WorkflowExecutionStatus.COMPLETED,
    )
    assert str(status) == "succeeded"
    history = (await handle.fetch_history()).to_json_dict()
    stored = _payload_texts(history)
    # What Temporal stores is ciphertext: not even last4 or the amount can be read there.
    assert stored and "4242" not in "\n".join(stored)
    started = history["events"][0]["workflowExecutionStartedEventAttributes"]
    assert (
        started["input"]["payloads"][0]["metadata"]["encoding"]
        == base64.b64encode(ENCODING).decode()
    )
    decoded = "\n".join(await _decrypted_payload_texts(history, stack.master_key()))
    assert "4242" in decoded  # last4 is there once decrypted, so payloads were really read
    assert PAN not in json.dumps(history) and PAN not in decoded
    assert '"cvc"' not in decoded and cvc not in decoded

    # The database holds the PAN only encrypted, and no CVC at all.
    async with db.acquire() as conn:
        dump: list[Any] = []
        for table in (
            "merchant",
            "merchant_key",
            "card_token",
            "payment_intent",
            "transaction",
            "event",
            "idempotency_record",
            "request_nonce",
        ):
            rows = await conn.fetch(f'SELECT * FROM "{table}"')
            dump.extend(repr(dict(r)) for r in rows)
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    text = "\n".join(dump)
    assert PAN not in text
    assert PAN.encode().hex() not in text
    assert not [c for c in columns if "cvc" in c["column_name"]]
    assert PAN not in stack.logs()


def _payloads(history: Any) -> list[dict[str, Any]]:
    """Every payload (`{"metadata", "data"}`) anywhere in a history's JSON."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history)
    return found


def _payload_texts(history: Any) -> list[str]:
    return [base64.b64decode(p["data"]).decode(errors="replace") for p in _payloads(history)]


async def _decrypted_payload_texts(history: Any, master_key: bytes) -> list[str]:
    """What the payloads say once decrypted with the stack's key, as the Web UI's codec reads
    them (each by the place it was bound to: the history does not say which activity)."""
    codec = PayloadEncryptionCodec(master_key, strict=False)
    stored = [json_format.ParseDict(p, Payload()) for p in _payloads(history)]
    return [p.data.decode(errors="replace") for p in await codec.decode(stored)]


@pytest.mark.parametrize("number", [PAN, HELD_APPROVE_PAN], ids=["4242", "held-1018"])
async def test_concurrent_charges_charge_once_and_the_other_is_409(
    number: str, durapay: DurapayClient, cardnet: httpx.AsyncClient
) -> None:
    intent = await create_intent(durapay)
    responses = await asyncio.gather(
        *(_charge(durapay, intent["id"], card(number)) for _ in range(2))
    )
    statuses = sorted(r.status_code for r in responses)
    # 4242 answers at once (200); the held card's answer is unknown past the adapter timeout.
    assert statuses == ([200, 409] if number == PAN else [202, 409]), [r.text for r in responses]
    loser = next(r for r in responses if r.status_code == 409).json()["error"]
    assert loser["type"] == "conflict"
    # In flight (the workflow refused it), or already `processing`/`succeeded` by the time the
    # API read the intent; both are the contract's 409.
    assert loser["code"] in ("attempt_in_flight", "payment_intent_unexpected_state"), loser
    if number == HELD_APPROVE_PAN:
        # A third charge while reconciliation is still going on is refused as well.
        third = await _charge(durapay, intent["id"], CARD_4242)
        assert third.status_code == 409, third.text
        # The API refuses it from the intent's `processing` status before asking the workflow.
        assert third.json()["error"]["type"] == "conflict"

    final = await settled_intent(durapay, intent["id"])
    assert final["status"] == "succeeded"
    assert len(final["transactions"]) == 1
    references = {t["networkReference"] for t in final["transactions"]}
    charged = [e for e in await ledger_entries(cardnet) if e["reference"] in references]
    assert [(e["type"], e["status"]) for e in charged] == [("charge", "approved")]
    events = (await durapay.get(f"/payment-intents/{intent['id']}/events")).json()["data"]
    assert [e["type"] for e in events] == [
        "payment.created",
        "payment.processing",
        "payment.succeeded",
    ]
