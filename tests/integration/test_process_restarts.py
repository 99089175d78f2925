"""Every process of the local stack may die: the launcher restarts Postgres and the Temporal dev
server in place, like the stateless children, and the API and the workers ride through the
outage. While a dependency is down the API answers 503 `service_unavailable` with a
`Retry-After` (never a 500); once it is back, a charge goes through with no restart of the API
or the workers.

The launcher is frozen (SIGSTOP) while a child is killed, so the outage stays open for as long as
the test looks at it; once resumed, the launcher notices the death and restarts the child.
Runs on its own stack, so the kills disturb no other test.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc
from temporalio.service import RPCError, RPCStatusCode

from api.errors import is_outage
from client import DurapayClient
from tests.integration.conftest import CARD_4242
from tests.integration.helpers import (
    FAST_TIMING_ENV,
    assert_eventually,
    charge,
    log_lines,
    own_stack,
    signed_merchant,
)
from tests.stack import RunningStack, process_alive

pytestmark = pytest.mark.integration

# The API's Temporal client retries an unreachable server for up to ~10 s before it gives up
# (temporalio's default RetryConfig), which races a charge's default 10 s wait: a longer wait
# lets the outage, not the wait, decide the answer.
RESTARTS_ENV = {**FAST_TIMING_ENV, "DURAPAY_CHARGE_WAIT_SECONDS": "30"}
OUTAGE_SECONDS = 30.0  # until the API has noticed that a killed dependency is gone
RESTART_SECONDS = 90.0  # a loaded 2-core machine: Postgres' crash recovery, Temporal's start-up
CHILDREN = ("postgres", "temporal", "cardnet", "worker-1", "api")


@pytest.fixture(scope="module")
def restarts_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "restarts", extra_env=RESTARTS_ENV) as running:
        yield running


@pytest.fixture(scope="module")
async def shop(restarts_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(restarts_stack, "Restarts Shop") as client:
        yield client


@pytest.fixture(scope="module")
async def ops(restarts_stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=restarts_stack.api_url, timeout=30) as http:
        yield http


async def test_killed_postgres_is_restarted_and_the_api_answers_503_meanwhile(
    restarts_stack: RunningStack, shop: DurapayClient, ops: httpx.AsyncClient
) -> None:
    stack = restarts_stack
    old_pid = stack.child_pid("postgres")
    riders = _pids(stack, exclude="postgres")
    seen: list[int] = []
    with stack.launcher_paused():
        os.kill(old_pid, signal.SIGKILL)

        async def read_refused() -> httpx.Response:
            response = await shop.get("/payment-intents?limit=1")
            seen.append(response.status_code)
            assert response.status_code == 503, f"still {response.status_code}"
            return response

        _assert_service_unavailable(await assert_eventually(read_refused, timeout=OUTAGE_SECONDS))
        _assert_service_unavailable(
            await shop.post("/payment-intents", {"amountInCents": 2499, "currency": "usd"})
        )
        await _assert_health_down(ops, "postgres")
    resumed = time.monotonic()

    new_pid = await _restarted(stack, ops, "postgres", old_pid)
    back = time.monotonic() - resumed
    txn = await assert_eventually(lambda: _charged(shop), timeout=RESTART_SECONDS, interval=0.5)
    charged = time.monotonic() - resumed
    print(
        f"\n[restarts] postgres {old_pid} -> {new_pid}: healthy {back:.1f} s after the launcher "
        f"resumed; first charge succeeded after {charged:.1f} s"
    )

    assert txn["status"] == "succeeded"
    assert set(seen) <= {200, 503}, seen  # never a 500 on the way down
    assert _pids(stack, exclude="postgres") == riders  # the API and the worker rode through
    _assert_no_unhandled_error(stack)


async def test_killed_temporal_is_restarted_and_a_charge_meanwhile_answers_503(
    restarts_stack: RunningStack, shop: DurapayClient, ops: httpx.AsyncClient
) -> None:
    stack = restarts_stack
    # Created while Temporal is up: creation itself would wait out the client's retries, then
    # defer the workflow's start to the first charge.
    created = await shop.post("/payment-intents", {"amountInCents": 2499, "currency": "usd"})
    assert created.status_code == 201, created.text
    intent_id = created.json()["id"]
    key = f"restarts-{uuid.uuid4().hex}"
    old_pid = stack.child_pid("temporal")
    riders = _pids(stack, exclude="temporal")
    with stack.launcher_paused():
        os.kill(old_pid, signal.SIGKILL)
        await assert_eventually(
            lambda: _assert_health_down(ops, "temporal"), timeout=OUTAGE_SECONDS
        )
        refused = await charge(shop, intent_id, CARD_4242, idempotency_key=key)
        _assert_service_unavailable(refused)
    resumed = time.monotonic()

    new_pid = await _restarted(stack, ops, "temporal", old_pid)
    back = time.monotonic() - resumed
    # The same Idempotency-Key: a 503 is not stored, so the retry is a fresh attempt, and the
    # refused one left nothing behind that would make it a 409.
    response = await charge(shop, intent_id, CARD_4242, idempotency_key=key)
    charged = time.monotonic() - resumed
    print(
        f"\n[restarts] temporal {old_pid} -> {new_pid}: healthy {back:.1f} s after the launcher "
        f"resumed; the retried charge succeeded after {charged:.1f} s"
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    intent = (await shop.get(f"/payment-intents/{intent_id}")).json()
    assert (intent["status"], intent["amountReceived"]) == ("succeeded", 2499)
    assert _pids(stack, exclude="temporal") == riders  # the API and the worker rode through
    _assert_no_unhandled_error(stack)
    # What the SDK's Rust core said about the outage came through Python logging: JSON lines
    # like every other (core/temporal_client.py), not plain text on stderr.
    for child in ("api", "worker-1"):
        log_lines(stack, child)


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause  # as `raise error from cause` leaves it
    return error


def _while_handling(error: BaseException, handled: BaseException) -> BaseException:
    error.__context__ = handled  # as raising `error` in an `except` block leaves it
    return error


CONNECTION_LOST = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),  # asyncpg lets it through as is
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (FileNotFoundError(errno.ENOENT, "missing"), False),  # a bug, not an outage
        # What SQLAlchemy raises while a restarted Postgres replays its WAL ("starting up").
        (
            sa_exc.DBAPIError(
                "SELECT 1",
                None,
                _caused(Exception("adapted"), asyncpg.CannotConnectNowError("starting up")),
            ),
            True,
        ),
        (sa_exc.InterfaceError("SELECT 1", None, Exception("connection is closed")), True),
        (RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b""), True),
        (
            _caused(
                RuntimeError("wrapped"), RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b"")
            ),
            True,
        ),
        (sa_exc.IntegrityError("INSERT", None, Exception("duplicate key")), False),
        (RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b""), False),
        (KeyError("bug"), False),
        # A session used again after its connection died mid-transaction.
        (
            _while_handling(
                sa_exc.PendingRollbackError(
                    "Can't reconnect until invalid transaction is rolled back"
                ),
                CONNECTION_LOST,
            ),
            True,
        ),
        (
            _while_handling(
                sa_exc.PendingRollbackError("a flush failed"),
                sa_exc.IntegrityError("INSERT", None, Exception("duplicate key")),
            ),
            False,
        ),
        (_while_handling(KeyError("a bug in an except block"), CONNECTION_LOST), False),
    ],
)
def test_outages_are_told_from_bugs(error: BaseException, outage: bool) -> None:
    """Runs without the stack: which failures answer 503 (retry later) rather than 500."""
    assert is_outage(error) is outage


# ---- helpers -----------------------------------------------------------------------------------
def _assert_service_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after") in ("1", "2"), response.headers
    error = response.json()["error"]
    assert error == {**error, "type": "api_error", "code": "service_unavailable", "param": None}
    assert set(error) == {"type", "code", "message", "param"}
    assert "Traceback" not in response.text


async def _assert_health_down(ops: httpx.AsyncClient, dependency: str) -> bool:
    response = await ops.get("/healthz")
    assert response.status_code == 503, response.text
    assert dependency in response.json()["down"], response.text
    return True


async def _restarted(stack: RunningStack, ops: httpx.AsyncClient, name: str, old_pid: int) -> int:
    """The child's new pid, once stack.json names a live process other than `old_pid` and the
    API says every dependency answers."""

    async def healthy_again() -> int:
        pid = stack.child_pid(name)
        assert pid != old_pid, f"{name} not restarted yet"
        assert process_alive(pid), f"{name} pid {pid} is gone"
        health = await ops.get("/healthz")
        assert health.status_code == 200, health.text
        return pid

    return await assert_eventually(
        healthy_again, timeout=RESTART_SECONDS, interval=0.2, message=f"{name} was not restarted"
    )


async def _charged(shop: DurapayClient) -> dict[str, Any]:
    created = await shop.post("/payment-intents", {"amountInCents": 2499, "currency": "usd"})
    assert created.status_code == 201, created.text
    response = await charge(shop, created.json()["id"], CARD_4242)
    assert response.status_code == 200, response.text
    return response.json()


def _pids(stack: RunningStack, *, exclude: str) -> dict[str, int]:
    return {name: stack.child_pid(name) for name in CHILDREN if name != exclude}


def _assert_no_unhandled_error(stack: RunningStack) -> None:
    api_log = (stack.home / "logs" / "api.log").read_text(errors="replace")
    assert "unhandled error" not in api_log, api_log[-3000:]
