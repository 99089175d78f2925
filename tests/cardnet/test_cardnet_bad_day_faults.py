"""The bad-day faults: commit, then a 502, garbage or a trickle; and a lagging status index."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from cardnet.faults import FaultSettings
from cardnet.settings import Settings

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api

CALLER_TIMEOUT = 0.4  # see test_cardnet_bad_day_cards.py


def _set(api: Api, **faults: object) -> None:
    response = api.http.post("/faults", json=faults)
    assert response.status_code == 200, response.text


def _outcome(api: Api, payload: dict[str, Any]) -> str:
    """What the caller saw: a status code, or how the answer failed."""
    try:
        response = api.post(payload, timeout=CALLER_TIMEOUT)
    except httpx.ReadTimeout:
        return "trickle"
    if response.status_code != 200:
        return str(response.status_code)
    try:
        response.json()
    except json.JSONDecodeError:
        return "garbage"
    return "200"


def _approved(api: Api, type_: str = "authorize") -> str:
    ref = api.ref(type_)
    assert api.post(api.primary(ref, type_=type_)).json()["status"] == "approved"
    return ref


RATES_AND_OUTCOMES = [
    ("commitThenErrorRate", "502"),
    ("garbageRate", "garbage"),
    ("trickleRate", "trickle"),
]


@pytest.mark.parametrize(("rate", "seen"), RATES_AND_OUTCOMES)
def test_bad_day_fault_commits_then_spoils_every_answer_while_set(
    api: Api, rate: str, seen: str
) -> None:
    _set(api, **{rate: 1})
    ref = api.ref()
    payload = api.primary(ref, "4000000000009995")
    assert _outcome(api, payload) == seen
    [entry] = api.ledger(ref)
    assert (entry["status"], entry["declineCode"]) == ("declined", "insufficient_funds")
    assert api.status(ref)["status"] == "declined"
    # Each request rolls again: a replay of the committed reference is spoiled again...
    assert _outcome(api, payload) == seen

    api.http.delete("/faults")
    # ...until the fault is off; the stored decision was never changed.
    replay = api.post(payload)
    assert replay.status_code == 200
    assert (replay.json()["status"], replay.json()["createdAt"]) == ("declined", entry["createdAt"])
    assert len(api.ledger(ref)) == 1


def test_commit_then_error_answers_a_gateway_502_not_the_networks_503(api: Api) -> None:
    _set(api, commitThenErrorRate=1)
    response = api.post(api.primary(api.ref()))
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "network_unavailable" not in response.text


@pytest.mark.parametrize(("rate", "seen"), RATES_AND_OUTCOMES)
@pytest.mark.parametrize("type_", ["capture", "void", "refund"])
def test_bad_day_faults_apply_to_child_operations(
    api: Api, rate: str, seen: str, type_: str
) -> None:
    parent = _approved(api, "charge" if type_ == "refund" else "authorize")
    _set(api, **{rate: 1})
    ref = api.ref(type_)
    assert _outcome(api, api.child(ref, type_, parent, 500)) == seen
    [entry] = api.ledger(ref)
    assert (entry["type"], entry["status"]) == (type_, "approved")


def test_a_fault_before_the_commit_wins_over_the_bad_day_faults(api: Api) -> None:
    _set(api, errorRate=1, commitThenErrorRate=1, garbageRate=1, trickleRate=1)
    ref = api.ref()
    response = api.post(api.primary(ref), timeout=CALLER_TIMEOUT)
    assert response.status_code == 503
    assert response.json()["error"] == "network_unavailable"
    assert api.ledger(ref) == []


def test_status_lag_hides_every_commit_from_status_queries_not_from_the_ledger(api: Api) -> None:
    _set(api, statusLagMs=600_000)
    ref = api.ref()
    assert api.post(api.primary(ref)).json()["status"] == "approved"
    assert api.status(ref)["status"] == "not_found"
    [entry] = api.ledger(ref)
    assert entry["status"] == "approved"
    # The index lags by the current setting, so turning the fault off ends the lag at once.
    api.http.delete("/faults")
    assert api.status(ref)["status"] == "approved"


def test_status_lag_ends_that_long_after_the_commit(api: Api) -> None:
    lag_ms = 1500
    _set(api, statusLagMs=lag_ms)
    ref = api.ref()
    assert api.post(api.primary(ref, "4000000000000002")).json()["status"] == "declined"
    assert api.status(ref)["status"] == "not_found"

    final = api.wait_status(ref, "declined", within=lag_ms / 1000 + 3)
    assert final["declineCode"] == "generic_decline"
    [entry] = api.ledger(ref)
    committed_at = datetime.fromisoformat(entry["committedAt"]).timestamp()
    assert time.time() >= committed_at + lag_ms / 1000 - 0.01


def test_status_lag_of_a_held_operation_counts_from_the_hold_commit(api: Api) -> None:
    _set(api, holdRate=1, statusLagMs=600_000)
    ref = api.ref()
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary(ref), timeout=0.3)
    # Not committed yet: the held operation is pending, as without the lag.
    assert api.status(ref)["status"] == "pending"
    assert api.wait_ledger(ref, within=api.hold_seconds + 3) != []
    assert api.status(ref)["status"] == "not_found"
    api.http.delete("/faults")
    assert api.status(ref)["status"] == "approved"


@pytest.mark.parametrize(
    "faults",
    [
        {"commitThenErrorRate": 1.5},
        {"garbageRate": -0.1},
        {"trickleRate": "often"},
        {"statusLagMs": -1},
        {"statusLagMs": 1.5},
        {"statusLag": 100},
        {"garbagerate": 0.5},
        {"trickleMs": 100},
    ],
)
def test_invalid_bad_day_faults_are_400_and_keep_the_current_setting(
    api: Api, faults: dict[str, object]
) -> None:
    _set(api, garbageRate=0.5, statusLagMs=10)
    response = api.http.post("/faults", json=faults)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_faults"
    current = api.http.get("/faults").json()
    assert (current["garbageRate"], current["statusLagMs"]) == (0.5, 10)


def test_seeded_bad_day_faults_are_reproducible(api: Api) -> None:
    def run() -> list[str]:
        _set(api, commitThenErrorRate=0.3, garbageRate=0.3, trickleRate=0.3, seed=17)
        return [_outcome(api, api.primary(api.ref())) for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {"200", "502", "garbage", "trickle"}


def test_each_replay_of_a_committed_reference_rolls_again(api: Api) -> None:
    _set(api, commitThenErrorRate=0.5, seed=3)
    payload = api.primary(api.ref())
    outcomes = [_outcome(api, payload) for _ in range(12)]
    assert set(outcomes) == {"200", "502"}
    assert len(api.ledger(payload["reference"])) == 1


def test_bad_day_faults_leave_the_seeded_sequence_of_the_other_faults_unchanged(
    api: Api,
) -> None:
    # Four draws per request from random.Random(seed), exactly as before the bad-day faults.
    rng = random.Random(11)
    expected = ["503" if [rng.random() for _ in range(4)][1] < 0.5 else "ok" for _ in range(12)]

    def run(**bad_day: float) -> list[str]:
        _set(api, errorRate=0.5, seed=11, **bad_day)
        outcomes = [_outcome(api, api.primary(api.ref())) for _ in range(12)]
        return ["503" if o == "503" else "ok" for o in outcomes]

    assert run() == expected
    assert run(commitThenErrorRate=0.5, garbageRate=0.5) == expected


def test_bad_day_faults_from_environment() -> None:
    raw = '{"commitThenErrorRate": 0.1, "garbageRate": 0.2, "trickleRate": 0.3, "statusLagMs": 40}'
    settings = Settings.from_env({"DURAPAY_CARDNET_FAULTS": raw})
    assert settings.faults == FaultSettings(
        commit_then_error_rate=0.1, garbage_rate=0.2, trickle_rate=0.3, status_lag_ms=40
    )
