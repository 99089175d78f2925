"""Fault injection through /faults, and that idempotency wins over faults."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest

from cardnet.faults import FaultSettings
from cardnet.settings import Settings

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api

ZERO = {
    "latencyMs": 0,
    "latencyRate": 0.0,
    "errorRate": 0.0,
    "dropRate": 0.0,
    "holdRate": 0.0,
    "commitThenErrorRate": 0.0,
    "garbageRate": 0.0,
    "trickleRate": 0.0,
    "statusLagMs": 0,
    "transitDelayMs": 0,
    "seed": None,
}


def _set(api: Api, **faults: object) -> httpx.Response:
    return api.http.post("/faults", json=faults)


def test_get_post_delete_faults(api: Api) -> None:
    assert api.http.get("/faults").json() == ZERO

    wanted = {**ZERO, "latencyMs": 5, "latencyRate": 0.5, "errorRate": 0.25, "seed": 7}
    response = _set(api, latencyMs=5, latencyRate=0.5, errorRate=0.25, seed=7)
    assert response.status_code == 200
    assert response.json() == wanted
    assert api.http.get("/faults").json() == wanted

    # POST replaces the whole setting: omitted fields go back to zero.
    assert _set(api, dropRate=0.1).json() == {**ZERO, "dropRate": 0.1}

    deleted = api.http.delete("/faults")
    assert deleted.status_code == 200
    assert deleted.json() == ZERO
    assert api.http.get("/faults").json() == ZERO


@pytest.mark.parametrize(
    "faults",
    [{"errorRate": 1.5}, {"dropRate": -0.1}, {"latencyMs": -1}, {"errorrate": 0.5}],
)
def test_invalid_faults_are_400_and_keep_the_current_setting(
    api: Api, faults: dict[str, object]
) -> None:
    _set(api, errorRate=0.5)
    response = api.http.post("/faults", json=faults)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_faults"
    assert api.http.get("/faults").json()["errorRate"] == 0.5


def test_error_rate_one_answers_503_without_charging(api: Api) -> None:
    _set(api, errorRate=1)
    ref = api.ref()
    response = api.post(api.primary(ref))
    assert response.status_code == 503
    assert response.json()["error"] == "network_unavailable"
    assert api.ledger(ref) == []

    api.http.delete("/faults")
    assert api.post(api.primary(ref)).json()["status"] == "approved"


def test_faults_never_change_a_committed_decision(api: Api) -> None:
    ref = api.ref()
    first = api.post(api.primary(ref, "4000000000000002")).json()
    _set(api, errorRate=1, holdRate=1)
    replay = api.post(api.primary(ref, "4000000000000002"), timeout=0.5)
    assert replay.status_code == 200
    assert replay.json() == first


def test_drop_rate_one_commits_then_loses_every_response(api: Api) -> None:
    _set(api, dropRate=1)
    ref = api.ref()
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(api.primary(ref))
    [entry] = api.ledger(ref)
    assert entry["status"] == "approved"
    # The replay of a committed reference may be dropped again.
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(api.primary(ref))

    api.http.delete("/faults")
    assert api.post(api.primary(ref)).json()["status"] == "approved"
    assert len(api.ledger(ref)) == 1


def test_hold_rate_one_holds_then_commits_the_normal_decision(api: Api) -> None:
    _set(api, holdRate=1)
    ref = api.ref()
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary(ref, "4000000000009995"), timeout=0.3)
    assert api.status(ref)["status"] == "pending"
    final = api.wait_status(ref, "declined", within=api.hold_seconds + 3)
    assert final["declineCode"] == "insufficient_funds"


def test_latency_fault_delays_the_answer(api: Api) -> None:
    _set(api, latencyMs=300, latencyRate=1)
    started = time.monotonic()
    assert api.post(api.primary(api.ref())).status_code == 200
    assert time.monotonic() - started >= 0.28


def test_seeded_faults_are_reproducible(api: Api) -> None:
    def run() -> list[int]:
        _set(api, errorRate=0.5, seed=42)
        return [api.post(api.primary(api.ref())).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 503}


def test_faults_from_environment() -> None:
    env = {"DURAPAY_CARDNET_FAULTS": '{"errorRate": 0.2, "seed": 3}'}
    settings = Settings.from_env(env)
    assert settings.faults == FaultSettings(error_rate=0.2, seed=3)
    assert settings.hold_seconds == 15
    assert Settings.from_env({"DURAPAY_CARDNET_HOLD_SECONDS": "2.5"}).hold_seconds == 2.5
