"""Request signing, as docs/api.md fixes it, implemented here without any server code.

    canonical = METHOD \\n PATH_AND_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA256(body))
    X-Signature: v1=<lowercase hex HMAC-SHA256(secret_key, canonical)>

PATH_AND_QUERY is the request target exactly as it goes on the wire (percent-escapes kept,
never decoded), with "?" only before a non-empty query. A unit test checks that these
functions and the API's verifier agree on tricky inputs, so the two can never drift.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Generator

import httpx

SIGNATURE_VERSION = "v1"
# 24 random bytes: 32 characters of [A-Za-z0-9_-], within the 16 to 64 that the API accepts.
NONCE_BYTES = 24


def canonical_request(
    method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path_and_query, timestamp, nonce, body_hash])


def request_signature(
    secret_key: str, *, method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """The `X-Signature` header value of one request."""
    canonical = canonical_request(method, path_and_query, timestamp, nonce, body)
    digest = hmac.new(secret_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def signed_headers(
    *,
    public_key: str,
    secret_key: str,
    method: str,
    path_and_query: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four authentication headers of one request."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or new_nonce()
    return {
        "Authorization": f"Bearer {public_key}",
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": request_signature(
            secret_key,
            method=method,
            path_and_query=path_and_query,
            timestamp=ts,
            nonce=nonce,
            body=body,
        ),
    }


def wire_path_and_query(url: httpx.URL) -> str:
    """PATH_AND_QUERY as httpx sends it: `url.raw_path` is the request target on the wire, after
    httpx has escaped what needs it (a space becomes `%20`, `é` becomes `%C3%A9`) and kept the
    escapes it was given (`%2D` stays `%2D`). The API reads the same bytes from the request
    line, where an empty query (`/p?`) arrives as no query at all."""
    raw_path, _, query = url.raw_path.partition(b"?")
    return (raw_path + (b"?" + query if query else b"")).decode()


def sign(
    request: httpx.Request,
    *,
    public_key: str,
    secret_key: str,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> httpx.Request:
    """Add the four authentication headers to a built request, signed over exactly the method,
    path, query and body that it will send."""
    request.headers.update(
        signed_headers(
            public_key=public_key,
            secret_key=secret_key,
            method=request.method,
            path_and_query=wire_path_and_query(request.url),
            body=request.content,
            timestamp=timestamp,
            nonce=nonce,
        )
    )
    return request


class DurapayAuth(httpx.Auth):
    """An `httpx.Auth` that signs every request it sends as the merchant whose keys it holds:
    `httpx.AsyncClient(base_url=..., auth=DurapayAuth(pk, sk))`.

    httpx runs the flow for each send, after the URL is final: a retried request is signed
    afresh (new timestamp and nonce), so the API's replay check never refuses a retry.
    """

    requires_request_body = True  # the signature covers the body's bytes

    def __init__(self, public_key: str, secret_key: str) -> None:
        self.public_key = public_key
        self._secret_key = secret_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield sign(request, public_key=self.public_key, secret_key=self._secret_key)

    def __repr__(self) -> str:  # never the secret key
        return f"DurapayAuth(public_key={self.public_key!r})"
