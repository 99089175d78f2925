"""api/body_limit.py: bodies over DURAPAY_MAX_BODY_BYTES (65,536 here, the default) answer 413
before anything reads them: no authentication (the nonce stays unused), no idempotency claim,
no JSON parsing, nothing stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from api.body_limit import DISCARD_LIMIT_BYTES, BodyLimitMiddleware
from client import signed_headers
from core.settings import Settings
from tests.api.conftest import Merchant, rows_of

pytestmark = pytest.mark.api

LIMIT = Settings.model_fields["max_body_bytes"].default
PATH = "/payment-intents"


def _intent_body(size: int) -> bytes:
    """A valid intent of exactly `size` bytes (JSON ignores the padding spaces)."""
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def _signed(merchant: Merchant, body: bytes, nonce: str) -> dict[str, str]:
    return {
        **signed_headers(
            public_key=merchant.public_key,
            secret_key=merchant.secret_key,
            method="POST",
            path_and_query=PATH,
            body=body,
            nonce=nonce,
        ),
        "Content-Type": "application/json",
        "Idempotency-Key": nonce,
    }


async def _chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "request_too_large",
            "message": f"The request body is larger than the {LIMIT} bytes this API accepts.",
            "param": None,
        }
    }
    assert response.headers["Cache-Control"] == "no-store"


async def _nonce_used(db: asyncpg.Pool, nonce: str) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM request_nonce WHERE nonce = $1", nonce))


async def test_a_signed_body_at_the_limit_is_accepted(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool
) -> None:
    body = _intent_body(LIMIT)
    response = await http.post(PATH, content=body, headers=_signed(merchant, body, "n" * 20))
    assert response.status_code == 201, response.text
    assert await _nonce_used(db, "n" * 20)


@pytest.mark.parametrize("sent_as", ["content-length", "chunked", "understated-length"])
async def test_a_signed_body_over_the_limit_is_413_before_anything_reads_it(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool, sent_as: str
) -> None:
    body = _intent_body(LIMIT + 1)
    nonce = f"oversize-{sent_as}"
    headers = _signed(merchant, body, nonce)
    before = await rows_of(db, merchant)
    if sent_as == "content-length":
        response = await http.post(PATH, content=body, headers=headers)
    elif sent_as == "chunked":  # no Content-Length: only the running size can tell
        response = await http.post(PATH, content=_chunks(body), headers=headers)
        assert "content-length" not in response.request.headers
    else:  # a Content-Length that lies: it claims less than is sent
        response = await http.post(
            PATH, content=_chunks(body), headers={**headers, "Content-Length": "100"}
        )
        assert response.request.headers["content-length"] == "100"
    _assert_too_large(response)
    assert not await _nonce_used(db, nonce)  # authentication never ran
    assert await rows_of(db, merchant) == before  # nor idempotency, nor the endpoint


@pytest.mark.parametrize("path", [PATH, "/merchants", "/no-such-route"])
async def test_a_body_over_the_limit_without_credentials_is_413(
    http: httpx.AsyncClient, path: str
) -> None:
    _assert_too_large(await http.post(path, content=b"{" + b" " * LIMIT + b"}"))


async def test_an_unparsable_content_length_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(PATH, content=b"{}", headers={"Content-Length": "12x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_length"


class SendingClient:
    """A client still sending its body in chunks when the answer comes (pure ASGI, no app)."""

    def __init__(self, chunks: int, chunk: bytes) -> None:
        self.pending = [chunk] * chunks
        self.read_when_answered: int | None = None
        self.status: int | None = None

    async def receive(self) -> dict[str, object]:
        body = self.pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.pending)}

    async def send(self, message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            self.read_when_answered = len(self.pending)
            # A message is a plain dict here; a start message's status is an int.
            self.status = message["status"]  # type: ignore[assignment]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_the_rest_of_an_oversize_body_is_read_before_the_413(declared: bool) -> None:
    # Closing a connection with unread data makes the kernel reset it, and the reset can
    # destroy the 413 before the client reads it: the body is drained first (within bounds).
    client = SendingClient(chunks=20, chunk=b" " * 8192)
    headers = [(b"content-length", str(20 * 8192).encode())] if declared else []
    scope = {"type": "http", "method": "POST", "path": "/payment-intents", "headers": headers}

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("an oversize body must not reach the app")

    # A plain-dict scope and a fake client's callables stand in for the server's.
    await BodyLimitMiddleware(app, max_body_bytes=65_536, timeout_seconds=10)(
        scope,
        client.receive,
        client.send,  # type: ignore[arg-type]
    )
    assert client.status == 413
    assert client.read_when_answered == 0


async def test_draining_stops_at_its_bound() -> None:
    # A client sending without end is answered (then reset) once the bound is drained.
    chunk = b" " * 65_536
    client = SendingClient(chunks=2 * DISCARD_LIMIT_BYTES // len(chunk), chunk=chunk)
    scope = {"type": "http", "method": "POST", "path": "/payment-intents", "headers": []}

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("an oversize body must not reach the app")

    # A plain-dict scope and a fake client's callables stand in for the server's.
    await BodyLimitMiddleware(app, max_body_bytes=65_536, timeout_seconds=10)(
        scope,
        client.receive,
        client.send,  # type: ignore[arg-type]
    )
    assert client.status == 413
    assert client.read_when_answered is not None and client.read_when_answered > 0
