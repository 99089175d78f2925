from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx

from core.crypto import sign_request


def signed_headers(*, public_key: str, secret_key: str, method: str, path_and_query: str,
                   body: bytes, timestamp: int | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    """The four authentication headers of one request."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(24)
    return {
        "Authorization": f"Bearer {public_key}",
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": sign_request(secret_key, method=method, path_and_query=path_and_query,
                                    timestamp=ts, nonce=nonce, body=body),
    }


class DurapayClient:
    """Signs and sends merchant requests; returns the raw `httpx.Response`.

    >>> async with DurapayClient(url, public_key, secret_key) as durapay:
    ...     intent = (await durapay.post("/payment-intents", {"amountInCents": 2499,
    ...                                                      "currency": "usd"})).json()
    """

    def __init__(self, base_url: str, public_key: str, secret_key: str,
                 *, timeout: float = 30.0) -> None:
        self.public_key = public_key
        self._secret_key = secret_key
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def __aenter__(self) -> DurapayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, json_body: Any = None, *,
                      idempotency_key: str | None = None) -> httpx.Response:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        headers = signed_headers(public_key=self.public_key, secret_key=self._secret_key,
                                 method=method, path_and_query=path, body=body)
        if body:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self._http.request(method, path, content=body, headers=headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.request("GET", path)

    async def post(self, path: str, json_body: Any = None, *,
                   idempotency_key: str | None = None) -> httpx.Response:
        return await self.request("POST", path, json_body, idempotency_key=idempotency_key)
