"""api/routers/payment_intents.py: create, retrieve, list, events, capture and cancel; the
signed-request auth and the Idempotency-Key semantics, seen through these endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio import workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from core.domain import IntentStatus, RecordedTransaction, transaction_id_for
from core.errors import ErrorType
from core.settings import Settings
from tests.api.conftest import (
    Merchant,
    assert_eventually,
    count,
    idempotency_record,
    insert_intent,
    rows_of,
    served_by,
    statements_of,
    workflow_exists,
)
from workflows.payment_messages import OperationResult

pytestmark = pytest.mark.api

INTENT_FIELDS = {
    "id",
    "object",
    "amountInCents",
    "currency",
    "description",
    "status",
    "captureMethod",
    "amountCapturable",
    "amountReceived",
    "amountRefunded",
    "lastError",
    "cancellationReason",
    "metadata",
    "createdAt",
    "updatedAt",
    "transactions",
}


async def test_create_answers_the_contract_shape(merchant: Merchant) -> None:
    response = await merchant.post(
        "/payment-intents",
        {
            "amountInCents": 2499,
            "currency": "usd",
            "description": "Order#1234",
            "captureMethod": "manual",
            "metadata": {"orderId": "1234"},
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    intent = response.json()
    assert set(intent) == INTENT_FIELDS
    assert intent["id"].startswith("pi_")
    assert intent == {
        **intent,
        "object": "payment_intent",
        "amountInCents": 2499,
        "currency": "usd",
        "description": "Order#1234",
        "status": "created",
        "captureMethod": "manual",
        "amountCapturable": 0,
        "amountReceived": 0,
        "amountRefunded": 0,
        "lastError": None,
        "cancellationReason": None,
        "metadata": {"orderId": "1234"},
        "transactions": [],
    }
    for stamp in (intent["createdAt"], intent["updatedAt"]):
        assert stamp.endswith("Z") and "T" in stamp, stamp


async def test_create_defaults_and_retrieve_returns_the_same_object(merchant: Merchant) -> None:
    created = await merchant.create_intent(amount=100)
    assert created["captureMethod"] == "automatic"
    assert created["description"] is None and created["metadata"] == {}
    fetched = await merchant.get(f"/payment-intents/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_create_starts_no_workflow(merchant: Merchant, temporal: Client) -> None:
    """Creation is database work only: the first operation opens the intent's run."""
    intent = await merchant.create_intent()
    assert not await workflow_exists(temporal, intent["id"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"currency": "usd"}, "amountInCents"),
        ({"amountInCents": 0, "currency": "usd"}, "amountInCents"),
        ({"amountInCents": 100_000_000, "currency": "usd"}, "amountInCents"),
        ({"amountInCents": "100", "currency": "usd"}, "amountInCents"),
        ({"amountInCents": 10.5, "currency": "usd"}, "amountInCents"),
        ({"amountInCents": 100, "currency": "xyz"}, "currency"),
        ({"amountInCents": 100, "currency": "USD"}, "currency"),
        ({"amountInCents": 100}, "currency"),
        ({"amountInCents": 100, "currency": "usd", "captureMethod": "later"}, "captureMethod"),
        ({"amountInCents": 100, "currency": "usd", "metadata": {"k": 1}}, "metadata.k"),
        ({"amountInCents": 100, "currency": "usd", "bogus": 1}, "bogus"),
    ],
)
async def test_create_validation_errors_name_the_param_and_change_nothing(
    merchant: Merchant, db: asyncpg.Pool, body: dict[str, Any], param: str
) -> None:
    before = await rows_of(db, merchant)
    # With a key: a request refused by validation claims nothing either.
    response = await merchant.post("/payment-intents", body, idempotency_key="order-1")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert await rows_of(db, merchant) == before
    # The key is still free: a valid request with it runs (no `idempotency_key_reused`).
    valid = await merchant.post(
        "/payment-intents", {"amountInCents": 100, "currency": "usd"}, idempotency_key="order-1"
    )
    assert valid.status_code == 201, valid.text


async def test_create_with_a_body_that_is_not_json_is_400(merchant: Merchant) -> None:
    response = await merchant.request(
        "POST", "/payment-intents", None, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# ---- idempotency -------------------------------------------------------------------------------


async def test_create_replays_the_same_bytes_and_status_for_the_same_key(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    body = {"amountInCents": 1500, "currency": "eur", "metadata": {"b": "2", "a": "1"}}
    first = await merchant.post("/payment-intents", body, idempotency_key="order-42")
    again = await merchant.post("/payment-intents", body, idempotency_key="order-42")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # byte for byte, key order included
    assert again.headers["content-type"] == first.headers["content-type"]
    # The replay did not run the handler: one intent, one `payment.created`.
    assert await count(db, "payment_intent", merchant) == 1
    assert await count(db, "event", merchant) == 1


async def test_create_with_a_key_is_one_transaction_its_claim_included(
    app: FastAPI, merchant: Merchant
) -> None:
    await merchant.create_intent()  # this process has cached the key
    with statements_of(app) as sent:
        created = await merchant.post(
            "/payment-intents",
            {"amountInCents": 700, "currency": "usd"},
            idempotency_key="one-transaction",
        )
    assert created.status_code == 201, created.text
    control = [query for query in sent if query in ("BEGIN;", "COMMIT;", "ROLLBACK;")]
    assert control == ["BEGIN;", "COMMIT;"], [query[:40] for query in sent]
    claim = next(i for i, query in enumerate(sent) if "INSERT INTO idempotency_record" in query)
    assert sent.index("BEGIN;") < claim < sent.index("COMMIT;")


async def _waiting_on_a_lock(db: asyncpg.Pool, statement: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND position($1 in query) > 0 AND pid <> pg_backend_pid()",
            statement,
        )
    )


async def test_a_create_sent_again_while_the_first_runs_gets_its_answer(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    """The claim commits with the intent: a second request with the key waits on the claim's
    row lock while the first runs, then replays the first's answer (nothing created twice)."""
    body = {"amountInCents": 650, "currency": "usd"}
    async with db.acquire() as holder, holder.transaction():
        # Holds the first request between its claim and its intent's insert.
        await holder.execute("LOCK TABLE payment_intent IN SHARE MODE")
        first = asyncio.create_task(
            merchant.post("/payment-intents", body, idempotency_key="twice")
        )
        await assert_eventually(lambda: _waiting_on_a_lock(db, "INSERT INTO payment_intent"))
        second = asyncio.create_task(
            merchant.post("/payment-intents", body, idempotency_key="twice")
        )
        await assert_eventually(lambda: _waiting_on_a_lock(db, "INSERT INTO idempotency_record"))
    answered, replayed = await first, await second
    assert answered.status_code == 201, answered.text
    assert (replayed.status_code, replayed.content) == (201, answered.content)
    assert await count(db, "payment_intent", merchant) == 1


async def test_create_without_a_key_creates_each_time(merchant: Merchant, db: asyncpg.Pool) -> None:
    body = {"amountInCents": 1500, "currency": "eur"}
    first = await merchant.post("/payment-intents", body)
    second = await merchant.post("/payment-intents", body)
    assert first.json()["id"] != second.json()["id"]
    assert await count(db, "payment_intent", merchant) == 2
    assert await count(db, "idempotency_record", merchant) == 0


async def test_a_key_reused_with_other_parameters_or_elsewhere_is_400(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client
) -> None:
    body = {"amountInCents": 1500, "currency": "eur"}
    first = await merchant.post("/payment-intents", body, idempotency_key="order-7")
    for path, other in [
        ("/payment-intents", {**body, "amountInCents": 1600}),
        (f"/payment-intents/{first.json()['id']}/capture", None),
    ]:
        response = await merchant.post(path, other, idempotency_key="order-7")
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert await count(db, "payment_intent", merchant) == 1
    assert not await workflow_exists(temporal, first.json()["id"])  # the capture never ran


async def test_the_same_key_of_another_merchant_is_another_key(
    merchant: Merchant, other_merchant: Merchant
) -> None:
    body = {"amountInCents": 1500, "currency": "eur"}
    mine = await merchant.post("/payment-intents", body, idempotency_key="shared-key")
    theirs = await other_merchant.post("/payment-intents", body, idempotency_key="shared-key")
    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]


async def test_an_invalid_key_is_400(merchant: Merchant) -> None:
    for key in ("x" * 256, "has space"):
        response = await merchant.post(
            "/payment-intents", {"amountInCents": 100, "currency": "usd"}, idempotency_key=key
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "idempotency_key_invalid"


async def test_a_claim_in_flight_is_409_and_an_abandoned_one_is_taken_over(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    """A claim without an answer: 409 while its request may still run; past a minute its
    process is presumed dead and a retry takes the key over."""
    body = {"amountInCents": 900, "currency": "usd"}
    await merchant.post("/payment-intents", body, idempotency_key="crashed")
    # As if the process had died before storing its answer (and its intent with it).
    await db.execute(
        "UPDATE idempotency_record SET response_status = NULL, "
        "response_body = NULL WHERE merchant_id = $1",
        merchant.id,
    )
    in_use = await merchant.post("/payment-intents", body, idempotency_key="crashed")
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "idempotency_key_in_use"
    await db.execute(
        "UPDATE idempotency_record SET created_at = now() - interval '2 minutes' "
        "WHERE merchant_id = $1",
        merchant.id,
    )
    taken_over = await merchant.post("/payment-intents", body, idempotency_key="crashed")
    assert taken_over.status_code == 201, taken_over.text
    replayed = await merchant.post("/payment-intents", body, idempotency_key="crashed")
    assert replayed.content == taken_over.content


async def test_an_answer_stored_before_answers_were_kept_as_sent_still_replays(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    body = {"amountInCents": 800, "currency": "usd"}
    first = await merchant.post("/payment-intents", body, idempotency_key="legacy")
    await db.execute(
        "UPDATE idempotency_record SET response_body = $2::jsonb WHERE merchant_id = $1",
        merchant.id,
        first.text,
    )
    replayed = await merchant.post("/payment-intents", body, idempotency_key="legacy")
    assert replayed.status_code == 201
    assert replayed.json() == first.json()


async def test_a_capture_whose_key_is_in_use_is_409_and_its_503_is_not_stored(
    merchant: Merchant, db: asyncpg.Pool
) -> None:
    """No worker runs, so the first capture waits for the whole wait, then answers 503; a
    request with the same key meanwhile gets 409 at once. A 503 releases the key."""
    intent = await merchant.create_intent(captureMethod="manual")
    path = f"/payment-intents/{intent['id']}/capture"
    first = asyncio.create_task(
        merchant.post(path, {"amountInCents": 100}, idempotency_key="cap-1")
    )
    await assert_eventually(lambda: idempotency_record(db, merchant, "cap-1"))
    started = time.monotonic()
    second = await merchant.post(path, {"amountInCents": 100}, idempotency_key="cap-1")
    assert second.status_code == 409, second.text
    error = second.json()["error"]
    assert (error["type"], error["code"]) == ("conflict", "idempotency_key_in_use")
    assert time.monotonic() - started < 1.0  # answered at once, not after the first
    assert not first.done()
    answered = await first
    assert answered.status_code == 503, answered.text
    assert answered.headers["retry-after"] == "2"
    assert await idempotency_record(db, merchant, "cap-1") is None


@workflow.defn(name="PaymentIntentWorkflow")
class RefusingPaymentWorkflow:
    """Stands in for the payment's workflow: refuses every capture's amount, as the real one
    refuses more than what is authorized."""

    captures_refused = 0

    @workflow.run
    async def run(self, _: Any) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update
    async def capture(self, _: Any) -> None:
        raise AssertionError("the validator refuses every capture")

    @capture.validator
    def _refuse(self, _: Any) -> None:
        RefusingPaymentWorkflow.captures_refused += 1
        raise ApplicationError(
            "more than authorized", type=ErrorType.AMOUNT_INVALID, non_retryable=True
        )


async def test_an_error_answer_is_stored_and_replayed_as_sent(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    """A refusal other than 409 or 503 is the answer to its key: stored, and replayed without
    asking the workflow again."""
    async with served_by(RefusingPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent(captureMethod="manual")
        path = f"/payment-intents/{intent['id']}/capture"
        refused_before = RefusingPaymentWorkflow.captures_refused
        first = await shop.post(path, {"amountInCents": 2000}, idempotency_key="cap-big")
        assert first.status_code == 400, first.text
        error = first.json()["error"]
        assert (error["code"], error["param"]) == ("amount_too_large", "amountInCents")
        again = await shop.post(path, {"amountInCents": 2000}, idempotency_key="cap-big")
        assert again.status_code == 400
        assert again.content == first.content
        assert RefusingPaymentWorkflow.captures_refused == refused_before + 1
    record = await idempotency_record(db, merchant, "cap-big")
    assert record is not None and record["response_status"] == 400


@workflow.defn(name="PaymentIntentWorkflow")
class SlowCancelPaymentWorkflow:
    """Stands in for the payment's workflow: a capture succeeds at once (nothing recorded), a
    cancel is accepted and never finishes, like one whose network answer is unknown."""

    @workflow.run
    async def run(self, _: Any) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update
    async def capture(self, _: Any) -> OperationResult:
        update = workflow.current_update_info()
        assert update is not None
        return OperationResult(
            IntentStatus.SUCCEEDED,
            RecordedTransaction(
                id=transaction_id_for(workflow.info().workflow_id, update.id),
                type="capture",
                status="succeeded",
                amount_in_cents=100,
            ),
        )

    @workflow.update
    async def cancel(self, _: Any) -> OperationResult:
        await workflow.wait_condition(lambda: False)
        raise AssertionError("never settles")


async def test_operations_answer_200_when_done_and_202_while_unsettled_and_replay_as_sent(
    settings: Settings, merchant: Merchant
) -> None:
    async with served_by(SlowCancelPaymentWorkflow, settings, merchant) as shop:
        intent = await shop.create_intent(captureMethod="manual")
        for verb, status in [("capture", 200), ("cancel", 202)]:
            path = f"/payment-intents/{intent['id']}/{verb}"
            first = await shop.post(path, idempotency_key=f"{verb}-1")
            assert first.status_code == status, (verb, first.text)
            assert set(first.json()) == INTENT_FIELDS
            assert first.json()["id"] == intent["id"]
            again = await shop.post(path, idempotency_key=f"{verb}-1")
            assert (again.status_code, again.content) == (status, first.content), verb


# ---- operations on a payment that is over -----------------------------------------------------


@pytest.mark.parametrize("verb", ["capture", "cancel"])
async def test_an_operation_on_a_canceled_intent_is_409_without_temporal(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client, verb: str
) -> None:
    """Only a workflow cancels a `created` intent, so this one is written to the database."""
    intent_id = await insert_intent(
        db, merchant, status="canceled", cancellation_reason="abandoned"
    )
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent_id}/{verb}", idempotency_key=f"{verb}-late"
    )
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("conflict", "payment_intent_unexpected_state")
    assert "canceled" in error["message"]
    assert not await workflow_exists(temporal, intent_id)
    assert await rows_of(db, merchant) == before  # a 409 is not stored: the key is free


@pytest.mark.parametrize(
    ("verb", "body", "param"),
    [
        ("capture", {"amountInCents": 0}, "amountInCents"),
        ("capture", {"amountInCents": "5"}, "amountInCents"),
        ("capture", {"amount": 5}, "amount"),
        ("cancel", {"cancellationReason": "bored"}, "cancellationReason"),
    ],
)
async def test_operation_validation_errors_are_400_and_claim_nothing(
    merchant: Merchant,
    db: asyncpg.Pool,
    temporal: Client,
    verb: str,
    body: dict[str, Any],
    param: str,
) -> None:
    intent = await merchant.create_intent(captureMethod="manual")
    before = await rows_of(db, merchant)
    response = await merchant.post(
        f"/payment-intents/{intent['id']}/{verb}", body, idempotency_key="op-1"
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert await rows_of(db, merchant) == before
    assert not await workflow_exists(temporal, intent["id"])


# ---- list, retrieve, events -------------------------------------------------------------------


async def test_list_is_newest_first_with_cursor_pagination(merchant: Merchant) -> None:
    created = [(await merchant.create_intent(amount=100 + n))["id"] for n in range(5)]
    newest_first = created[::-1]
    page = (await merchant.get("/payment-intents?limit=2")).json()
    assert set(page) == {"object", "data", "hasMore"} and page["object"] == "list"
    seen: list[str] = []
    while True:
        seen += [i["id"] for i in page["data"]]
        assert all(set(i) == INTENT_FIELDS for i in page["data"])
        if not page["hasMore"]:
            break
        page = (
            await merchant.get(f"/payment-intents?limit=2&startingAfter={page['data'][-1]['id']}")
        ).json()
    assert seen == newest_first
    everything = (await merchant.get("/payment-intents?limit=5")).json()
    assert [i["id"] for i in everything["data"]] == newest_first
    assert everything["hasMore"] is False


async def test_list_filters_by_status(merchant: Merchant, db: asyncpg.Pool) -> None:
    created = await merchant.create_intent()
    canceled = await insert_intent(db, merchant, status="canceled")
    succeeded = await insert_intent(db, merchant, status="succeeded", amount_received=2499)
    for status, expected in [
        ("canceled", [canceled]),
        ("succeeded", [succeeded]),
        ("created", [created["id"]]),
        ("failed", []),
    ]:
        listed = (await merchant.get(f"/payment-intents?status={status}")).json()
        assert [i["id"] for i in listed["data"]] == expected, status
    bad = await merchant.get("/payment-intents?status=nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "status"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten"])
async def test_list_refuses_a_bad_limit(merchant: Merchant, query: str) -> None:
    response = await merchant.get(f"/payment-intents?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


async def test_list_and_retrieve_see_only_the_callers_intents(
    merchant: Merchant, other_merchant: Merchant
) -> None:
    mine = await merchant.create_intent()
    theirs = await other_merchant.create_intent()
    listed = (await merchant.get("/payment-intents")).json()["data"]
    assert [i["id"] for i in listed] == [mine["id"]]
    for path in (
        f"/payment-intents/{theirs['id']}",
        "/payment-intents/pi_doesnotexist",
        f"/payment-intents/{theirs['id']}/events",
    ):
        response = await merchant.get(path)
        assert response.status_code == 404, path
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("not_found", "resource_missing")
    cursor = await merchant.get(f"/payment-intents?startingAfter={theirs['id']}")
    assert cursor.status_code == 400
    assert cursor.json()["error"]["param"] == "startingAfter"


@pytest.mark.parametrize("verb", ["capture", "cancel"])
async def test_an_operation_on_another_merchants_intent_is_404_and_claims_nothing(
    merchant: Merchant, other_merchant: Merchant, db: asyncpg.Pool, temporal: Client, verb: str
) -> None:
    theirs = await other_merchant.create_intent(captureMethod="manual")
    response = await merchant.post(
        f"/payment-intents/{theirs['id']}/{verb}", idempotency_key="not-mine"
    )
    assert response.status_code == 404
    assert await idempotency_record(db, merchant, "not-mine") is None
    assert not await workflow_exists(temporal, theirs["id"])


async def test_intent_events_are_its_audit_trail(merchant: Merchant) -> None:
    intent = await merchant.create_intent(amount=777)
    response = await merchant.get(f"/payment-intents/{intent['id']}/events")
    assert response.status_code == 200
    listed = response.json()
    assert listed["hasMore"] is False
    [event] = listed["data"]
    assert set(event) == {"id", "object", "type", "createdAt", "sequence", "intentSequence", "data"}
    assert event["id"].startswith("evt_") and event["object"] == "event"
    assert event["type"] == "payment.created"
    assert isinstance(event["sequence"], int)
    assert event["intentSequence"] == 1
    assert event["data"] == {
        "paymentId": intent["id"],
        "amountInCents": 777,
        "currency": "usd",
        "status": "created",
        "amountCapturable": 0,
        "amountReceived": 0,
        "amountRefunded": 0,
        "transactionId": None,
        "previous": None,
        "transaction": None,
    }


async def test_openapi_documents_the_idempotent_endpoints(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    for path in (
        "/payment-intents",
        "/payment-intents/{id}/capture",
        "/payment-intents/{id}/cancel",
        "/payment-intents/{id}/transactions",
        "/payment-intents/{id}/refunds",
    ):
        operation = spec["paths"][path]["post"]
        assert "idempotency-key" in [p["name"] for p in operation["parameters"]], path
        schema = json.dumps(operation["requestBody"]["content"]["application/json"]["schema"])
        assert "#/components/schemas/" in schema, path  # one body, not one per dependency
    assert "201" in spec["paths"]["/payment-intents"]["post"]["responses"]


# ---- a retry whose first request answered 503 although its Update ran -------------------------


async def insert_settled(
    db: asyncpg.Pool,
    merchant: Merchant,
    intent_id: str,
    *,
    verb: str,
    kind: str,
    key: str,
    amount: int = 2499,
) -> str:
    """The transaction the `verb` Update of `key` recorded and settled, as the workflow names
    it: what a first request that answered 503 left behind when its Update ran all the same."""
    transaction_id = transaction_id_for(intent_id, f"{verb}:{key}")
    await db.execute(
        "INSERT INTO transaction (id, merchant_id, payment_intent_id, type, amount_in_cents, "
        "currency, status, network_reference, reconciled) "
        "VALUES ($1, $2, $3, $4, $5, 'usd', 'succeeded', $1, false)",
        transaction_id,
        merchant.id,
        intent_id,
        kind,
        amount,
    )
    return transaction_id


@pytest.mark.parametrize(
    ("verb", "status", "kind"), [("cancel", "canceled", "void"), ("refunds", "refunded", "refund")]
)
async def test_a_retry_on_a_closed_payment_gets_its_own_settled_operation(
    merchant: Merchant, db: asyncpg.Pool, temporal: Client, verb: str, status: str, kind: str
) -> None:
    """The first request's Update voided or refunded the payment and closed it, but its answer
    was a 503. The retry with the same Idempotency-Key gets that operation's outcome, without
    Temporal; another key still gets the 409 of a closed payment."""
    intent_id = await insert_intent(
        db,
        merchant,
        status=status,
        amount_received=2499,
        amount_refunded=2499 if kind == "refund" else 0,
    )
    settled = await insert_settled(
        db, merchant, intent_id, verb=verb.removesuffix("s"), kind=kind, key="answer-lost"
    )
    path = f"/payment-intents/{intent_id}/{verb}"
    retried = await merchant.post(path, idempotency_key="answer-lost")
    assert retried.status_code == 200, retried.text
    if kind == "refund":  # a refund answers with its transaction, a cancel with the intent
        assert (retried.json()["id"], retried.json()["status"]) == (settled, "succeeded")
    else:
        assert (retried.json()["id"], retried.json()["status"]) == (intent_id, status)
    again = await merchant.post(path, idempotency_key="answer-lost")
    assert (again.status_code, again.content) == (200, retried.content)  # stored now
    other = await merchant.post(path, idempotency_key="another-operation")
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert not await workflow_exists(temporal, intent_id)


@workflow.defn(name="PaymentIntentWorkflow")
class CapturedPaymentWorkflow:
    """Stands in for a fresh run of a payment already captured: its state machine refuses
    every capture."""

    @workflow.run
    async def run(self, _: Any) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update
    async def capture(self, _: Any) -> None:
        raise AssertionError("the validator refuses every capture")

    @capture.validator
    def _refuse(self, _: Any) -> None:
        raise ApplicationError(
            "succeeded -> succeeded", type=ErrorType.ILLEGAL_TRANSITION, non_retryable=True
        )


async def test_a_capture_retried_after_its_run_closed_gets_its_own_capture(
    settings: Settings, merchant: Merchant, db: asyncpg.Pool
) -> None:
    """The capture's Update ran and the run closed before its answer came back (503); the retry
    opens a fresh run, whose state machine refuses a capture of a captured payment. The retry
    gets its own capture's outcome; another key gets that 409."""
    async with served_by(CapturedPaymentWorkflow, settings, merchant) as shop:
        intent_id = await insert_intent(
            db, merchant, status="succeeded", capture_method="manual", amount_received=2499
        )
        await insert_settled(
            db, merchant, intent_id, verb="capture", kind="capture", key="answer-lost"
        )
        path = f"/payment-intents/{intent_id}/capture"
        retried = await shop.post(path, idempotency_key="answer-lost")
        assert retried.status_code == 200, retried.text
        assert (retried.json()["id"], retried.json()["status"]) == (intent_id, "succeeded")
        other = await shop.post(path, idempotency_key="another-capture")
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "payment_intent_unexpected_state"
