"""`DurapayClient`: signed requests, raw `httpx.Response`s (no retries, no error mapping).

For tests and tools that look at exact statuses and bodies; merchants want `client.Durapay`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from client.signing import DurapayAuth


class DurapayClient:
    """Signs and sends merchant requests; returns the raw `httpx.Response`.

    >>> async with DurapayClient(url, public_key, secret_key) as durapay:
    ...     intent = (await durapay.post("/payment-intents", {"amountInCents": 2499,
    ...                                                      "currency": "usd"})).json()
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.public_key = public_key
        # Signed by the client's auth at send time, over the target httpx really sends (it
        # escapes and joins `path` with the base URL), not over the string it was given.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            auth=DurapayAuth(public_key, secret_key),
        )

    async def __aenter__(self) -> DurapayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, json_body: Any = None, *, idempotency_key: str | None = None
    ) -> httpx.Response:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        request = self._http.build_request(method, path, content=body, headers=headers)
        return await self._http.send(request)

    async def get(self, path: str) -> httpx.Response:
        return await self.request("GET", path)

    async def post(
        self, path: str, json_body: Any = None, *, idempotency_key: str | None = None
    ) -> httpx.Response:
        return await self.request("POST", path, json_body, idempotency_key=idempotency_key)
