"""The typed SDK (`client.Durapay`) against the real stack: the payment lifecycle, lists over
several pages, typed errors, a charge whose answer is lost on the way back (retried with the
same Idempotency-Key, charged once), a real webhook delivery verified by `client.webhooks`,
and `durapay tour`, which uses the SDK."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from client import (
    AuthenticationError,
    CardError,
    ConflictError,
    Durapay,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    NotFoundError,
    WebhookVerificationError,
    webhooks,
)
from tests.integration.helpers import assert_eventually, ledger_entries
from tests.integration.webhook_receiver import WebhookReceiver
from tests.stack import BIN, RunningStack

CARD_4242: dict[str, Any] = {
    "number": "4242424242424242",
    "expMonth": 12,
    "expYear": 2030,
    "cvc": "123",
}
CARD_DECLINED = {**CARD_4242, "number": "4000000000000002"}


@pytest.fixture
async def durapay(stack: RunningStack, merchant: dict[str, Any]) -> AsyncIterator[Durapay]:
    async with Durapay(stack.api_url, merchant["publicKey"], merchant["secretKey"]) as sdk:
        yield sdk


async def test_create_charge_capture_and_refund(
    durapay: Durapay, cardnet: httpx.AsyncClient
) -> None:
    intent = await durapay.payment_intents.create(
        amount_in_cents=5000,
        currency="eur",
        capture_method="manual",
        description="Order#1",
        metadata={"orderId": "1"},
    )
    assert (intent.status, intent.capture_method, intent.metadata) == (
        "created",
        "manual",
        {"orderId": "1"},
    )
    authorization = await durapay.payment_intents.charge(intent.id, card=CARD_4242)
    assert authorization.status == "succeeded" and authorization.card is not None
    assert (authorization.card.brand, authorization.card.last4) == ("visa", "4242")
    captured = await durapay.payment_intents.capture(intent.id, amount_in_cents=4000)
    assert (captured.status, captured.amount_received) == ("succeeded", 4000)
    refund = await durapay.refunds.create(intent.id, amount_in_cents=1500)
    assert (refund.type, refund.status, refund.amount_in_cents) == ("refund", "succeeded", 1500)
    final = await durapay.payment_intents.retrieve(intent.id)
    assert (final.status, final.amount_refunded) == ("partially_refunded", 1500)
    assert [t.type for t in await durapay.transactions.list(intent.id)] == [
        "charge",
        "capture",
        "refund",
    ]
    for txn in final.transactions:  # the network saw each operation once
        assert len(await ledger_entries(cardnet, txn.network_reference)) == 1
    trail = [e.type for e in await durapay.payment_intents.list_events(intent.id)]
    assert trail[0] == "payment.created" and trail[-1] == "payment.partially_refunded"
    other = await durapay.payment_intents.create(amount_in_cents=100, currency="usd")
    canceled = await durapay.payment_intents.cancel(other.id, cancellation_reason="duplicate")
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "duplicate")


async def test_lists_follow_every_page(durapay: Durapay) -> None:
    created = [
        (await durapay.payment_intents.create(amount_in_cents=100 + n, currency="usd")).id
        for n in range(5)
    ]
    newest_first = list(reversed(created))
    assert [pi.id async for pi in durapay.payment_intents.list(limit=2)] == newest_first
    pages = [page async for page in durapay.payment_intents.list(limit=2).pages()]
    assert [len(p.data) for p in pages] == [2, 2, 1] and not pages[-1].has_more
    assert [
        pi.id async for pi in durapay.payment_intents.list(limit=2, starting_after=newest_first[1])
    ] == newest_first[2:]
    events = [e async for e in durapay.events.list(type="payment.created", limit=2)]
    assert [e.data["paymentId"] for e in events] == newest_first


async def test_errors_are_typed(
    durapay: Durapay, stack: RunningStack, merchant: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError) as invalid:
        await durapay.payment_intents.create(amount_in_cents=0, currency="usd")
    assert invalid.value.param == "amountInCents" and invalid.value.http_status == 400
    assert (invalid.value.request_id or "").startswith("req_")
    with pytest.raises(NotFoundError) as missing:
        await durapay.payment_intents.retrieve("pi_nope")
    assert missing.value.code == "resource_missing"
    intent = await durapay.payment_intents.create(
        amount_in_cents=700, currency="usd", idempotency_key=f"k-{uuid.uuid4()}"
    )
    with pytest.raises(ConflictError):
        await durapay.payment_intents.capture(intent.id)
    with pytest.raises(CardError) as declined:
        await durapay.payment_intents.charge(intent.id, card=CARD_DECLINED)
    assert declined.value.decline_code == "generic_decline"
    assert declined.value.transaction is not None
    assert declined.value.transaction.status == "failed"
    with pytest.raises(InvalidRequestError) as bad_card:
        await durapay.payment_intents.charge(intent.id, card={**CARD_4242, "number": "4242"})
    assert bad_card.value.param is not None and "4242" not in str(bad_card.value)
    key = f"order-{uuid.uuid4()}"
    await durapay.payment_intents.create(amount_in_cents=1, currency="usd", idempotency_key=key)
    with pytest.raises(IdempotencyKeyReusedError):
        await durapay.payment_intents.create(amount_in_cents=2, currency="usd", idempotency_key=key)
    async with Durapay(stack.api_url, merchant["publicKey"], "sk_test_wrong") as impostor:
        with pytest.raises(AuthenticationError):
            await impostor.payment_intents.retrieve(intent.id)


@dataclass
class Forwarded:
    request_line: str
    headers: dict[str, str]
    status: int  # the API's answer, whether the client got it or not
    dropped: bool


@dataclass
class DroppingProxy:
    """A TCP proxy in front of the API that forwards HTTP/1.1 requests one at a time. For the
    first request that `drop` selects, it waits for the API's whole answer, then closes the
    client's connection without sending it: the request took effect, its answer is lost."""

    upstream: str
    drop: Callable[[str], bool]
    forwarded: list[Forwarded] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head, body = await _read_message(client_reader)
                request_line, headers = _parse_head(head)
                status, answer = await self._forward(head + body)
                dropping = self.drop(request_line) and not any(f.dropped for f in self.forwarded)
                self.forwarded.append(Forwarded(request_line, headers, status, dropping))
                if dropping:
                    client_writer.transport.abort()
                    return
                client_writer.write(answer)
                await client_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            client_writer.close()

    async def _forward(self, request: bytes) -> tuple[int, bytes]:
        target = urlsplit(self.upstream)
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            writer.write(request)
            await writer.drain()
            head, body = await _read_message(reader)
        finally:
            writer.close()
        return int(head.split(b" ", 2)[1]), head + body


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    _, headers = _parse_head(head)
    if "chunked" in headers.get("transfer-encoding", ""):
        raise AssertionError("the proxy reads only Content-Length messages")
    return head, await reader.readexactly(int(headers.get("content-length", "0")))


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    first, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return first, headers


async def test_a_charge_whose_answer_is_lost_is_retried_with_its_key_and_charged_once(
    stack: RunningStack, merchant: dict[str, Any], cardnet: httpx.AsyncClient
) -> None:
    def is_charge(request_line: str) -> bool:
        return request_line.startswith("POST /payment-intents/") and "/transactions" in request_line

    async with (
        DroppingProxy(stack.api_url, is_charge) as proxy,
        Durapay(proxy.url, merchant["publicKey"], merchant["secretKey"]) as durapay,
    ):
        intent = await durapay.payment_intents.create(amount_in_cents=4242, currency="usd")
        txn = await durapay.payment_intents.charge(intent.id, card=CARD_4242)
        final = await durapay.payment_intents.retrieve(intent.id)
    charges = [f for f in proxy.forwarded if is_charge(f.request_line)]
    assert [(c.status, c.dropped) for c in charges] == [(200, True), (200, False)]
    first, retry = (c.headers for c in charges)
    assert first["idempotency-key"] and first["idempotency-key"] == retry["idempotency-key"]
    assert first["x-nonce"] != retry["x-nonce"]  # re-signed, or the API would refuse a replay
    assert txn.status == "succeeded"
    assert (final.status, final.amount_received) == ("succeeded", 4242)
    assert [t.id for t in final.transactions if t.type == "charge"] == [txn.id]
    assert len(await ledger_entries(cardnet, txn.network_reference)) == 1


async def test_a_real_delivery_verifies_with_the_sdk(durapay: Durapay) -> None:
    with WebhookReceiver() as receiver:
        path = f"/hook/{uuid.uuid4().hex[:10]}"
        endpoint = await durapay.webhook_endpoints.create(
            url=receiver.url(path), enabled_events=["payment.created"]
        )
        assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
        assert (await durapay.webhook_endpoints.retrieve(endpoint.id)).secret is None
        intent = await durapay.payment_intents.create(amount_in_cents=321, currency="usd")

        async def delivered() -> Any:
            got = receiver.at(path)
            assert got, "no delivery yet"
            return got[0]

        received = await assert_eventually(delivered, timeout=30)
    event = webhooks.verify(received.body, received.headers, endpoint.secret)
    assert (event.type, event.data["paymentId"]) == ("payment.created", intent.id)
    assert received.verify(endpoint.secret)["id"] == event.id  # the reference library agrees
    tampered = received.body.replace(b"321", b"322")
    with pytest.raises(WebhookVerificationError):
        webhooks.verify(tampered, received.headers, endpoint.secret)
    deleted = await durapay.webhook_endpoints.delete(endpoint.id)
    assert deleted.deleted and deleted.id == endpoint.id


async def test_durapay_tour_runs_on_the_sdk(stack: RunningStack) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "durapay"), "tour"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("POST /payment-intents -> pi_")
    assert "status=succeeded card=…4242" in lines[1]
    assert lines[-1] == "events: payment.created -> payment.processing -> payment.succeeded"


async def test_durapay_request_sends_a_signed_request_through_the_sdk(stack: RunningStack) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "durapay"), "request", *args],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = await asyncio.to_thread(
        run, "POST", "/payment-intents", '{"amountInCents": 1000, "currency": "eur"}'
    )
    assert created.returncode == 0, created.stderr[-2000:]
    assert created.stdout.startswith("HTTP 201\n") and '"currency": "eur"' in created.stdout
    missing = await asyncio.to_thread(run, "GET", "/payment-intents/pi_nope")
    assert missing.returncode == 1 and missing.stdout.startswith("HTTP 404\n")
