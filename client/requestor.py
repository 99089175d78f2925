"""Sends one API call: signs it (each attempt afresh), gives every POST an Idempotency-Key kept
across its retries, retries what `client.retry` says, and turns errors into exceptions."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from client.errors import APIConnectionError, error_from_response
from client.retry import (
    CONNECTION_ERRORS,
    NOT_SENT_ERRORS,
    RetryPolicy,
    refused_unprocessed,
    repeats_safely,
    retry_after_seconds,
    retryable_status,
)
from client.signing import DurapayAuth

log = logging.getLogger("durapay.client")

Sleep = Callable[[float], Awaitable[None]]
USER_AGENT = "durapay-python"


class Requestor:
    def __init__(
        self,
        api_url: str,
        public_key: str,
        secret_key: str,
        *,
        retry: RetryPolicy,
        timeout: float | httpx.Timeout,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.retry = retry
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=api_url,
            timeout=timeout,
            transport=transport,
            auth=DurapayAuth(public_key, secret_key),
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """The answer's JSON for a 2xx (202 included); raises a `DurapayError` otherwise."""
        response, key = await self._send(
            method, path, params=params, body=body, idempotency_key=idempotency_key
        )
        if response.status_code >= 400:
            raise error_from_response(
                response,
                idempotency_key=key,
                retry_after=(retry_after_seconds(response.headers.get("Retry-After"))),
            )
        return response.json()

    async def request_raw(
        self, method: str, path: str, *, body: Any = None, idempotency_key: str | None = None
    ) -> httpx.Response:
        """The last answer as it came (any status), after the same signing and retries."""
        response, _ = await self._send(method, path, body=body, idempotency_key=idempotency_key)
        return response

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
    ) -> tuple[httpx.Response, str | None]:
        method = method.upper()
        idempotent_on_server = repeats_safely(method, path)
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if content else {}
        key = idempotency_key
        if method == "POST":
            # One key per call, the same on every retry: the API answers a retry of a request
            # it already handled with the first answer instead of doing it twice.
            key = key or str(uuid.uuid4())
        if key:
            headers["Idempotency-Key"] = key
        query = {k: v for k, v in (params or {}).items() if v is not None}
        retries = 0
        waited = 0.0
        delay: float | None  # a connection error always has one, an answer may not
        while True:
            # Built afresh and signed at send time (DurapayAuth): a new timestamp and nonce on
            # every attempt, so the API's replay protection never refuses a retry.
            request = self._http.build_request(
                method, path, params=query, content=content, headers=headers
            )
            try:
                response = await self._http.send(request)
            except CONNECTION_ERRORS as error:
                # Where the API ignores Idempotency-Key, only an error before anything was
                # sent may be retried: a lost answer may hide a request that took effect.
                safe = idempotent_on_server or isinstance(error, NOT_SENT_ERRORS)
                delay = self.retry.delay(retries + 1, None)
                if (
                    not safe
                    or retries >= self.retry.max_retries
                    or waited + delay > self.retry.max_total_wait
                ):
                    raise APIConnectionError(
                        f"No answer from the Durapay API ({type(error).__name__}: {error})",
                        idempotency_key=key,
                    ) from error
                retries += 1
                waited += delay
                log.info(
                    "%s %s: %s; retry %d in %.2f s",
                    method,
                    path,
                    type(error).__name__,
                    retries,
                    delay,
                )
                await self._sleep(delay)
                continue
            delay = self._retry_delay(response, retries, idempotent_on_server)
            if delay is None or waited + delay > self.retry.max_total_wait:
                return response, key
            retries += 1
            waited += delay
            log.info(
                "%s %s: HTTP %d; retry %d in %.2f s",
                method,
                path,
                response.status_code,
                retries,
                delay,
            )
            await response.aclose()
            await self._sleep(delay)

    def _retry_delay(
        self, response: httpx.Response, retries: int, idempotent_on_server: bool
    ) -> float | None:
        """Seconds to wait before retrying this answer, or None to return it."""
        if response.status_code < 400 or retries >= self.retry.max_retries:
            return None
        if not idempotent_on_server and not refused_unprocessed(response):
            return None  # a 429 or a marked 503 did nothing; anything else may have
        if not retryable_status(response.status_code, _error_code(response)):
            return None
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            return None
        return self.retry.delay(retries + 1, retry_after)


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code != 409:
        return None  # only 409s are told apart by code
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
