"""State survives a restart: ledger, attempt counters, status counters and holds."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.cardnet.conftest import Api, CardnetServer

    ApiFor = Callable[[CardnetServer], Api]


@pytest.fixture
def restartable(fresh_server: CardnetServer) -> Iterator[CardnetServer]:
    yield fresh_server.start()


def test_ledger_and_idempotency_survive_restart(
    restartable: CardnetServer, api_for: ApiFor
) -> None:
    api = api_for(restartable)
    approved = api.post(api.primary("r-approved")).json()
    declined = api.post(api.primary("r-declined", "4000000000000002")).json()
    before = api.ledger()

    restartable.stop()
    restartable.start()
    api = api_for(restartable)
    assert api.ledger() == before
    assert api.post(api.primary("r-approved")).json() == approved
    assert api.post(api.primary("r-declined", "4000000000000002")).json() == declined
    assert api.post(api.primary("r-approved", amount=1)).status_code == 409
    assert api.ledger() == before


def test_attempt_counter_survives_restart(restartable: CardnetServer, api_for: ApiFor) -> None:
    api = api_for(restartable)
    payload = api.primary("r-flaky", "4000000000001042")
    assert api.post(payload).status_code == 503

    restartable.stop()
    restartable.start()
    api = api_for(restartable)
    assert api.post(payload).status_code == 503
    assert api.post(payload).status_code == 200


def test_status_query_counter_survives_restart(restartable: CardnetServer, api_for: ApiFor) -> None:
    api = api_for(restartable)
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary("r-slow", "4000000000001059"), timeout=0.3)
    for _ in range(3):
        assert api.status("r-slow")["status"] == "pending"

    restartable.stop()
    restartable.start()
    api = api_for(restartable)
    assert [api.status("r-slow")["status"] for _ in range(3)] == ["pending", "pending", "approved"]


def test_interrupted_hold_completes_after_restart(
    fresh_server: CardnetServer, api_for: ApiFor
) -> None:
    # A longer hold so the restart surely lands in the middle of it.
    fresh_server.hold_seconds = 2.0
    fresh_server.start()
    api = api_for(fresh_server)
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary("r-held", "4000000000001018"), timeout=0.3)
    fresh_server.stop()

    db = sqlite3.connect(fresh_server.data_dir / "ledger.sqlite3")
    try:
        assert db.execute("SELECT reference FROM holds").fetchall() == [("r-held",)]
        assert db.execute("SELECT COUNT(*) FROM operations").fetchone() == (0,)
    finally:
        db.close()

    fresh_server.start()
    api = api_for(fresh_server)
    assert api.status("r-held")["status"] == "pending"
    deadline = time.monotonic() + 5
    while api.status("r-held")["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.status("r-held")["status"] == "approved"
    [entry] = api.ledger("r-held")
    assert entry["status"] == "approved"


def test_bad_day_cards_stay_bad_for_their_reference_after_restart(
    restartable: CardnetServer, api_for: ApiFor
) -> None:
    api = api_for(restartable)
    gateway_error = api.primary("r-502", "4000000000001067")
    garbage = api.primary("r-garbage", "4000000000001075")
    assert api.post(gateway_error).status_code == 502
    assert api.post(garbage).headers["content-length"] != "0"

    restartable.stop()
    restartable.start()
    api = api_for(restartable)
    assert api.post(gateway_error).status_code == 502
    with pytest.raises(ValueError):
        api.post(garbage).json()
    assert [e["reference"] for e in api.ledger()] == ["r-502", "r-garbage"]
    assert api.status("r-502")["status"] == api.status("r-garbage")["status"] == "approved"


def test_status_lag_counts_from_the_commit_across_restarts(
    fresh_server: CardnetServer, api_for: ApiFor
) -> None:
    fresh_server.status_lag_seconds = 600
    api = api_for(fresh_server.start())
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary("r-lag", "4000000000001091"), timeout=0.3)
    assert api.wait_ledger("r-lag", within=api.hold_seconds + 3) != []
    assert api.status("r-lag")["status"] == "not_found"

    fresh_server.stop()
    fresh_server.start()
    assert api_for(fresh_server).status("r-lag")["status"] == "not_found"

    # The lag is the running setting measured from the stored commit time.
    fresh_server.stop()
    fresh_server.status_lag_seconds = 0
    fresh_server.start()
    assert api_for(fresh_server).status("r-lag")["status"] == "approved"


def test_a_ledger_from_before_the_status_lag_column_is_upgraded_in_place(
    fresh_server: CardnetServer, api_for: ApiFor
) -> None:
    api = api_for(fresh_server.start())
    api.post(api.primary("r-old")).raise_for_status()
    with pytest.raises(httpx.TimeoutException):
        api.post(api.primary("r-old-hold", "4000000000001018"), timeout=0.3)
    fresh_server.stop()
    db = sqlite3.connect(fresh_server.data_dir / "ledger.sqlite3")
    try:
        for table in ("operations", "holds"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN status_lags")
    finally:
        db.close()

    fresh_server.start()
    api = api_for(fresh_server)
    assert api.status("r-old")["status"] == "approved"
    assert api.wait_status("r-old-hold", "approved")["status"] == "approved"
    assert [e["reference"] for e in api.ledger()] == ["r-old", "r-old-hold"]
    assert api.post(api.primary("r-new", "4000000000001067")).status_code == 502
