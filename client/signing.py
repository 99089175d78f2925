from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx

from core.crypto import canonical_path_and_query, sign_request


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


def wire_path_and_query(url: httpx.URL) -> str:
    """PATH_AND_QUERY as httpx sends it: `url.raw_path` is the request target on the wire, after
    httpx has escaped what needs it (a space becomes `%20`, `é` becomes `%C3%A9`) and kept the
    escapes it was given (`%2D` stays `%2D`)."""
    raw_path, _, query = url.raw_path.partition(b"?")
    return canonical_path_and_query(raw_path, query)


def sign(request: httpx.Request, *, public_key: str, secret_key: str,
         timestamp: int | None = None, nonce: str | None = None) -> httpx.Request:
    """Add the four authentication headers to a built request, signed over exactly the method,
    path, query and body that it will send."""
    request.headers.update(signed_headers(
        public_key=public_key, secret_key=secret_key, method=request.method,
        path_and_query=wire_path_and_query(request.url), body=request.content,
        timestamp=timestamp, nonce=nonce))
    return request


class DurapayClient:
    """Signs and sends merchant requests; returns the raw `httpx.Response`.

    >>> async with DurapayClient(url, public_key, secret_key) as durapay:
    ...     intent = (await durapay.post("/payment-intents", {"amountInCents": 2499,
    ...                                                      "currency": "usd"})).json()
    """

    def __init__(self, base_url: str, public_key: str, secret_key: str, *,
                 timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.public_key = public_key
        self._secret_key = secret_key
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> DurapayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, json_body: Any = None, *,
                      idempotency_key: str | None = None) -> httpx.Response:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        # Built first, signed after: httpx escapes and joins `path` with the base URL, and the
        # signature must cover the target it sends, not the string it was given.
        request = self._http.build_request(method, path, content=body, headers=headers)
        sign(request, public_key=self.public_key, secret_key=self._secret_key)
        return await self._http.send(request)

    async def get(self, path: str) -> httpx.Response:
        return await self.request("GET", path)

    async def post(self, path: str, json_body: Any = None, *,
                   idempotency_key: str | None = None) -> httpx.Response:
        return await self.request("POST", path, json_body, idempotency_key=idempotency_key)
