"""The SDK signs on its own (no server code): its signature must equal the API's verifier's
over every kind of input, or a merchant's requests would start failing with 401."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import DurapayAuth, signed_headers, wire_path_and_query
from client.signing import canonical_request, request_signature
from core.crypto import canonical_path_and_query, sign_request
from core.crypto import canonical_request as server_canonical_request

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("api", "core", "workflows", "activities", "workers", "cardnet", "cli")

TRICKY = [
    ("GET", "/payment-intents", b""),
    ("get", "/payment-intents?limit=10&status=succeeded", b""),
    ("POST", "/payment-intents/pi_a%2Db?x=%7E&y=a%20b", b'{"amountInCents":2499}'),
    ("POST", "/payment-intents", '{"description":"Café ☕ \\u00e9\\n"}'.encode()),
    ("POST", "/p%2fq", "é ☕ 𝄞 \x00 \n\r\t".encode()),
    ("DELETE", "/webhook-endpoints/we_1", b""),
    ("POST", "/payment-intents/%C3%A9", bytes(range(256))),
]


@pytest.mark.parametrize(("method", "path_and_query", "body"), TRICKY)
def test_client_signature_equals_the_servers(method: str, path_and_query: str, body: bytes) -> None:
    secret = "sk_test_" + "é☕"  # a non-ASCII key too: both sides must encode it as UTF-8
    for timestamp, nonce in [("1700000000", "n" * 16), ("0", "A-b_" * 16)]:
        assert canonical_request(
            method, path_and_query, timestamp, nonce, body
        ) == server_canonical_request(method, path_and_query, timestamp, nonce, body)
        ours = request_signature(
            secret,
            method=method,
            path_and_query=path_and_query,
            timestamp=timestamp,
            nonce=nonce,
            body=body,
        )
        theirs = sign_request(
            secret,
            method=method,
            path_and_query=path_and_query,
            timestamp=timestamp,
            nonce=nonce,
            body=body,
        )
        assert ours == theirs


@pytest.mark.parametrize(
    "target",
    [
        "/payment-intents",
        "/payment-intents?limit=10",
        "/payment-intents/pi_a%2Db?x=%7E&y=a b",
        "/events?type=payment.created&startingAfter=évt",
        "/p?",
        "/p%2fq?a=%2F&b=é",
        "/payment-intents/pi_%5F1?status=cr%65ated",
    ],
)
async def test_the_server_verifies_what_the_auth_signs_as_sent(target: str) -> None:
    """Through httpx's own URL handling, as an ASGI server sees the request line: the API's
    canonical path and signature over what arrived equal what `DurapayAuth` signed."""
    seen: list[dict[str, Any]] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen.append(
            {
                "path_and_query": canonical_path_and_query(
                    scope["raw_path"], scope["query_string"]
                ),
                "headers": headers,
                "body": body,
                "method": scope["method"],
            }
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with httpx.AsyncClient(
        base_url="http://durapay.test",
        auth=DurapayAuth("pk", "sk"),
        transport=httpx.ASGITransport(app=app),
    ) as http:
        await http.post(target, content='{"a":"é"}'.encode())
        await http.get(target)
    for request in seen:
        headers = request["headers"]
        assert headers["x-signature"] == sign_request(
            "sk",
            method=request["method"],
            path_and_query=request["path_and_query"],
            timestamp=headers["x-timestamp"],
            nonce=headers["x-nonce"],
            body=request["body"],
        )


def test_wire_path_keeps_escapes_and_drops_an_empty_query() -> None:
    assert wire_path_and_query(httpx.URL("http://h/p%2Dq?a=b c")) == "/p%2Dq?a=b%20c"
    assert wire_path_and_query(httpx.URL("http://h/p?")) == "/p"


def test_each_signing_uses_a_fresh_valid_nonce() -> None:
    nonces = {
        signed_headers(
            public_key="pk", secret_key="sk", method="GET", path_and_query="/", body=b""
        )["X-Nonce"]
        for _ in range(50)
    }
    assert len(nonces) == 50
    for nonce in nonces:
        assert 16 <= len(nonce) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in nonce)


def test_the_auth_never_shows_the_secret_key() -> None:
    assert "sk_test_secret" not in repr(DurapayAuth("pk_test_x", "sk_test_secret"))


@pytest.mark.processes
def test_client_imports_no_server_package() -> None:
    """Every module of `client/` imports with the server's packages made unimportable."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        BLOCKED = {SERVER_PACKAGES!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("client imported server package " + name)
                return None

        sys.meta_path.insert(0, Block())
        import client
        for module in pkgutil.walk_packages(client.__path__, "client."):
            importlib.import_module(module.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok", len(list(pkgutil.walk_packages(client.__path__))))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok ")
