"""Shared helpers for the real-stack tests: polling instead of sleeping, test timing, ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from client import DurapayClient
from tests.stack import RunningStack, private_dir, start_stack

T = TypeVar("T")

# Test-friendly timing for the whole stack. The simulator's hold (3 s) outlives the adapter's
# timeout (1.5 s), so a held card really becomes an unknown outcome; reconciliation then polls
# after 0.5 s, 1 s, 2 s, 2 s … so a held card settles a few seconds after its 202. The status
# index of card …1091 lags 4 s; a charge still `not_found` after 8 s is reversed (more than the
# hold plus the lag, as in production), and `not_found` alone is believed only for attempts older
# than 15 s (networks without reversals).
FAST_TIMING_ENV: dict[str, str] = {
    "DURAPAY_NETWORK_TIMEOUT_SECONDS": "1.5",
    "DURAPAY_CARDNET_HOLD_SECONDS": "3",
    "DURAPAY_CARDNET_STATUS_LAG_SECONDS": "4",
    "DURAPAY_RECONCILE_FIRST_DELAY_SECONDS": "0.5",
    "DURAPAY_RECONCILE_MAX_DELAY_SECONDS": "2",
    "DURAPAY_RECONCILE_NOT_FOUND_SAFE_AGE_SECONDS": "15",
    "DURAPAY_RECONCILE_REVERSAL_AFTER_SECONDS": "8",
}


async def assert_eventually(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str = "",
) -> T:
    """Poll `predicate` until it returns something other than None/False without raising
    AssertionError, and return that value; past `timeout`, fail with the last reason."""
    deadline = time.monotonic() + timeout
    last: str = "predicate never returned a value"
    while True:
        try:
            result = await predicate()
        except AssertionError as error:
            last = str(error) or repr(error)
        else:
            if result is not None and result is not False:
                return result
            last = f"predicate returned {result!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true after {timeout:.1f} s: {message or last}"
                + (f" (last: {last})" if message else "")
            )
        await asyncio.sleep(interval)


async def charge(
    durapay: DurapayClient, intent_id: str, card_body: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    return await durapay.post(
        f"/payment-intents/{intent_id}/transactions",
        {"type": "charge", "card": card_body},
        **kwargs,
    )


async def ledger_entries(
    cardnet: httpx.AsyncClient, reference: str | None = None
) -> list[dict[str, Any]]:
    """The simulator's ledger (oldest first), optionally for one reference."""
    params = {"reference": reference} if reference is not None else None
    response = await cardnet.get("/ledger", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["data"]
    return [e for e in entries if reference is None or e["reference"] == reference]


async def settled_intent(
    durapay: DurapayClient, intent_id: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll GET /payment-intents/{id} (no other client action) until it leaves `processing`."""

    async def left_processing() -> dict[str, Any]:
        response = await durapay.get(f"/payment-intents/{intent_id}")
        assert response.status_code == 200, response.text
        intent: dict[str, Any] = response.json()
        assert intent["status"] != "processing", f"{intent_id} still processing"
        return intent

    return await assert_eventually(left_processing, timeout=timeout, interval=0.25)


@contextmanager
def own_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, **start: Any
) -> Iterator[RunningStack]:
    """A stack of a test module's own (other settings, or processes it may kill)."""
    running = start_stack(private_dir(name) / "home", **start)
    try:
        yield running
    finally:
        running.stop()


async def onboard(admin: httpx.AsyncClient, name: str = "Acme") -> dict[str, Any]:
    response = await admin.post("/merchants", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


@asynccontextmanager
async def signed_merchant(
    stack: RunningStack, name: str = "Acme", *, api_url: str | None = None
) -> AsyncIterator[DurapayClient]:
    """Onboard a merchant on `stack` and yield a client that signs as it (against `api_url`,
    e.g. a second API process, when given)."""
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {stack.admin_token}"}
    ) as admin:
        merchant = await onboard(admin, name)
    async with DurapayClient(
        api_url or stack.api_url, merchant["publicKey"], merchant["secretKey"]
    ) as client:
        yield client


def log_lines(stack: RunningStack, child: str, *, strict: bool = True) -> list[dict[str, Any]]:
    """The child's log lines as objects; any line that is not JSON fails the test, unless not
    `strict` (a test about one request's line, not about the format, skips them)."""
    text = (stack.home / "logs" / f"{child}.log").read_text(errors="replace")
    # Complete lines only: the process may be writing the last one as we read.
    complete = text.rpartition("\n")[0]
    lines = []
    for line in filter(str.strip, complete.splitlines()):
        try:
            lines.append(json.loads(line))
        except ValueError:
            assert not strict, f"{child}.log has a line that is not JSON: {line[:500]}"
    return lines


@asynccontextmanager
async def database_pool(stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    """Direct access to the stack's database, to look behind the API."""
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def cardnet_client(stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator's operator surface (its ledger, its faults)."""
    async with httpx.AsyncClient(base_url=stack.cardnet_url, timeout=10) as http:
        yield http
