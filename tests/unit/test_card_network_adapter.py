"""The adapter's reading of the network's answers: only a documented "nothing was done" may
become a failure; a gateway error, a broken body, a timeout or `not_found` is unknown.

The answers are scripted with httpx's MockTransport (the real simulator's answers are covered
end to end in tests/integration/test_test_cards.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.card_network import CardNetworkActivities, NetworkAnswer, OperationRequest
from core.crypto import Cipher
from core.domain import NetworkOutcome
from core.errors import ErrorType
from core.keyring import KeyRing, Purpose

REFERENCE = "txn_0123456789abcdef01234567"
OPERATION = {
    "reference": REFERENCE,
    "type": "capture",
    "status": "approved",
    "declineCode": None,
    "amountInCents": 2499,
    "currency": "usd",
    "createdAt": "2026-11-25T12:00:00.000Z",
}


def _adapter(handler: Callable[[httpx.Request], httpx.Response]) -> CardNetworkActivities:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    # No database: these tests never reach it.
    return CardNetworkActivities(
        http=http,
        sessions=None,  # type: ignore[arg-type]
        vault=Cipher(KeyRing(os.urandom(32)), Purpose.VAULT),
        base_url="http://network",
        timeout_seconds=1.0,
    )


async def _capture(handler: Callable[[httpx.Request], httpx.Response]) -> NetworkAnswer:
    return await _adapter(handler).capture_charge(
        OperationRequest(REFERENCE, "txn_parent", 2499, "usd")
    )


async def test_an_approval_carries_the_networks_time() -> None:
    answer = await _capture(lambda _: httpx.Response(200, json=OPERATION))
    assert answer.outcome is NetworkOutcome.APPROVED
    assert answer.network_time == 1795608000.0


async def test_a_decline_keeps_its_code() -> None:
    declined = {**OPERATION, "status": "declined", "declineCode": "already_captured"}
    answer = await _capture(lambda _: httpx.Response(200, json=declined))
    assert (answer.outcome, answer.decline_code) == (NetworkOutcome.DECLINED, "already_captured")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, text="<html><title>502 Bad Gateway</title></html>"),
        httpx.Response(500, json={"error": "internal"}),
        httpx.Response(504, text="gateway timeout"),
        httpx.Response(503, text="<html>503 from a load balancer</html>"),
        httpx.Response(
            200,
            content=json.dumps(OPERATION).encode()[:40],
            headers={"content-type": "application/json"},
        ),
        httpx.Response(200, json={**OPERATION, "status": "weird"}),
        httpx.Response(200, json={**OPERATION, "reference": "txn_someone_else"}),
        httpx.Response(200, json=[OPERATION]),
        httpx.Response(202, json={**OPERATION, "status": "pending"}),
        httpx.Response(404, json={"error": "not_found"}),
    ],
    ids=[
        "gateway-502",
        "500",
        "504",
        "503-not-the-network",
        "truncated-body",
        "unknown-status",
        "other-reference",
        "not-an-object",
        "pending",
        "404",
    ],
)
async def test_anything_that_is_not_a_clear_answer_is_unknown(response: httpx.Response) -> None:
    answer = await _capture(lambda _: response)
    assert answer.outcome is NetworkOutcome.UNKNOWN


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("cut"),
        httpx.ReadError("reset"),
        httpx.WriteError("broken pipe"),
    ],
    ids=["read-timeout", "dropped", "read-error", "write-error"],
)
async def test_a_request_that_may_have_reached_the_network_is_unknown(
    error: httpx.HTTPError,
) -> None:
    def fail(_: httpx.Request) -> httpx.Response:
        raise error

    assert (await _capture(fail)).outcome is NetworkOutcome.UNKNOWN


async def test_the_networks_own_unavailable_is_retried_as_nothing_charged() -> None:
    with pytest.raises(ApplicationError) as raised:
        await _capture(
            lambda _: httpx.Response(
                503, json={"error": "network_unavailable", "message": "nothing charged"}
            )
        )
    assert (raised.value.type, raised.value.non_retryable) == (ErrorType.NETWORK_UNAVAILABLE, False)


async def test_no_connection_is_retried_as_nothing_charged() -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ApplicationError) as raised:
        await _capture(refuse)
    assert raised.value.type == ErrorType.NETWORK_UNAVAILABLE


@pytest.mark.parametrize("status, error", [(409, "reference_reused"), (422, "invalid_request")])
async def test_a_request_the_network_documents_as_not_processed_is_final(
    status: int, error: str
) -> None:
    with pytest.raises(ApplicationError) as raised:
        await _capture(lambda _: httpx.Response(status, json={"error": error}))
    assert (raised.value.type, raised.value.non_retryable) == (
        ErrorType.NETWORK_REJECTED_REQUEST,
        True,
    )


async def test_status_not_found_is_unknown_and_marked() -> None:
    adapter = _adapter(
        lambda _: httpx.Response(200, json={"reference": REFERENCE, "status": "not_found"})
    )
    answer = await adapter.query_charge_status(REFERENCE)
    assert (answer.outcome, answer.not_found) == (NetworkOutcome.UNKNOWN, True)


@pytest.mark.parametrize(
    "response, outcome",
    [
        (httpx.Response(200, json={**OPERATION, "status": "pending"}), NetworkOutcome.UNKNOWN),
        (httpx.Response(200, text='{"reference": '), NetworkOutcome.UNKNOWN),
        (httpx.Response(200, json=OPERATION), NetworkOutcome.APPROVED),
        (httpx.Response(200, json={**OPERATION, "reference": "txn_other"}), NetworkOutcome.UNKNOWN),
    ],
    ids=["pending", "garbage", "approved", "other-reference"],
)
async def test_status_answers(response: httpx.Response, outcome: NetworkOutcome) -> None:
    answer = await _adapter(lambda _: response).query_charge_status(REFERENCE)
    assert (answer.outcome, answer.not_found) == (outcome, False)
