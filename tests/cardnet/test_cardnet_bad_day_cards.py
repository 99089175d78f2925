"""The bad-day cards: the money moves, but the answers about it go wrong."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cardnet.conftest import Api, CardnetServer

    ApiFor = Callable[[CardnetServer], Api]

GATEWAY_ERROR_CARD = "4000000000001067"
GARBAGE_CARD = "4000000000001075"
TRICKLE_CARD = "4000000000001083"
LAGGING_STATUS_CARD = "4000000000001091"
# Shorter than the trickle's pause between pieces (conftest.TRICKLE_SECONDS = 1 s), longer
# than the commit plus the headers take.
CALLER_TIMEOUT = 0.4


def _assert_charged_once(api: Api, ref: str, type_: str = "charge") -> None:
    [entry] = api.ledger(ref)
    assert (entry["type"], entry["status"]) == (type_, "approved")
    status = api.status(ref)
    assert (status["status"], status["type"], status["createdAt"]) == (
        "approved",
        type_,
        entry["createdAt"],
    )


@pytest.mark.parametrize("type_", ["charge", "authorize"])
def test_gateway_error_card_answers_502_to_every_retry_and_charges_once(
    api: Api, type_: str
) -> None:
    ref = api.ref()
    payload = api.primary(ref, GATEWAY_ERROR_CARD, type_=type_)
    for _ in range(3):
        response = api.post(payload)
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")
        assert "502 Bad Gateway" in response.text
    _assert_charged_once(api, ref, type_)


@pytest.mark.parametrize("type_", ["charge", "authorize"])
def test_garbage_card_answers_truncated_json_to_every_retry_and_charges_once(
    api: Api, type_: str
) -> None:
    ref = api.ref()
    payload = api.primary(ref, GARBAGE_CARD, type_=type_)
    for _ in range(3):
        response = api.post(payload)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        # A complete HTTP message (no transport error), just not the protocol.
        assert len(response.content) == int(response.headers["content-length"]) > 0
        with pytest.raises(json.JSONDecodeError):
            response.json()
    _assert_charged_once(api, ref, type_)


@pytest.mark.parametrize("type_", ["charge", "authorize"])
def test_trickle_card_times_out_every_caller_and_charges_once(api: Api, type_: str) -> None:
    ref = api.ref()
    payload = api.primary(ref, TRICKLE_CARD, type_=type_)
    for _ in range(2):
        with pytest.raises(httpx.ReadTimeout):
            api.post(payload, timeout=CALLER_TIMEOUT)
    _assert_charged_once(api, ref, type_)


def test_trickle_card_sends_the_headers_at_once_and_the_body_slowly(api: Api) -> None:
    payload = api.primary(api.ref(), TRICKLE_CARD)
    with api.http.stream("POST", "/v1/operations", json=payload, timeout=CALLER_TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) > 0
        with pytest.raises(httpx.ReadTimeout):
            r.read()


def test_patient_caller_gets_the_whole_trickled_answer(api: Api) -> None:
    ref = api.ref()
    started = time.monotonic()
    response = api.post(api.primary(ref, TRICKLE_CARD), timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "approved"
    assert time.monotonic() - started >= 2 * 1.0 * 0.9  # two pauses of conftest.TRICKLE_SECONDS
    _assert_charged_once(api, ref)


def test_trickle_stops_when_the_caller_hangs_up(
    fresh_server: CardnetServer, api_for: ApiFor
) -> None:
    fresh_server.trickle_seconds = 60
    api = api_for(fresh_server.start())
    with api.http.stream("POST", "/v1/operations", json=api.primary(api.ref(), TRICKLE_CARD)) as r:
        assert r.status_code == 200
        assert fresh_server.requests_in_flight() == 1
    # Leaving the block closed the connection: the server gives up long before 60 s.
    deadline = time.monotonic() + 5
    while fresh_server.requests_in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fresh_server.requests_in_flight() == 0


def test_trickle_does_not_hold_up_a_shutdown(fresh_server: CardnetServer, api_for: ApiFor) -> None:
    fresh_server.trickle_seconds = 60
    api = api_for(fresh_server.start())
    headers_seen = threading.Event()
    outcome: list[BaseException | None] = []

    def patient_caller() -> None:
        payload = api.primary(api.ref(), TRICKLE_CARD)
        try:
            with api.http.stream("POST", "/v1/operations", json=payload, timeout=60) as r:
                headers_seen.set()
                r.read()
            outcome.append(None)
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=patient_caller, daemon=True)
    caller.start()
    assert headers_seen.wait(5)
    started = time.monotonic()
    fresh_server.stop()
    assert time.monotonic() - started < 5
    caller.join(5)
    assert isinstance(outcome[0], httpx.TransportError)


def test_lagging_status_card_is_not_found_for_the_lag_after_its_commit(api: Api) -> None:
    ref = api.ref()
    payload = api.primary(ref, LAGGING_STATUS_CARD)
    with pytest.raises(httpx.TimeoutException):
        api.post(payload, timeout=0.3)
    assert api.status(ref)["status"] == "pending"

    [entry] = api.wait_ledger(ref, within=api.hold_seconds + 3)
    assert entry["status"] == "approved"
    lagging = api.status(ref)
    assert lagging == {**dict.fromkeys(lagging, None), "reference": ref, "status": "not_found"}
    # The POST is not the status API: a retry gets the stored approval, and charges nothing.
    retry = api.post(payload)
    assert (retry.status_code, retry.json()["status"]) == (200, "approved")
    assert api.status(ref)["status"] == "not_found"

    final = api.wait_status(ref, "approved", within=api.status_lag_seconds + 3)
    assert final["status"] == "approved"
    committed_at = datetime.fromisoformat(entry["committedAt"]).timestamp()
    assert time.time() >= committed_at + api.status_lag_seconds - 0.01
    assert len(api.ledger(ref)) == 1
