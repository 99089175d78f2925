"""Reversals by reference: void an approved original, or leave a tombstone that declines it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.cardnet.conftest import Api


def _reverse(
    api: Api, original: str, reference: str | None = None, amount: int = 1000
) -> dict[str, Any]:
    response = api.post(api.child(reference or api.ref("rev"), "reversal", original, amount))
    assert response.status_code == 200, response.text
    return response.json()


def _decision(body: dict[str, Any]) -> tuple[str, str | None]:
    return body["status"], body["declineCode"]


def test_reversal_voids_an_approved_charge_and_authorization(api: Api) -> None:
    for type_ in ("charge", "authorize"):
        original = api.ref(type_)
        assert api.post(api.primary(original, type_=type_)).json()["status"] == "approved"
        reversal = _reverse(api, original)
        assert _decision(reversal) == ("approved", None)
        assert (reversal["type"], reversal["parentReference"]) == ("reversal", original)
        # The ledger shows the money coming back as a void of the original.
        [entry] = api.ledger(reversal["reference"])
        assert (entry["type"], entry["status"], entry["parentReference"]) == (
            "void",
            "approved",
            original,
        )
        # Nothing acts on a reversed original any more.
        refund_or_capture = "refund" if type_ == "charge" else "capture"
        after = api.post(api.child(api.ref(), refund_or_capture, original, 1000)).json()
        assert _decision(after) == ("declined", "already_reversed")


def test_reversal_of_a_declined_original_changes_nothing(api: Api) -> None:
    original = api.ref()
    api.post(api.primary(original, "4000000000000002"))
    assert _decision(_reverse(api, original)) == ("declined", "original_declined")
    [entry] = api.ledger(original)
    assert _decision(entry) == ("declined", "generic_decline")


def test_reversal_of_a_captured_or_refunded_original_is_declined(api: Api) -> None:
    auth = api.ref("authorize")
    api.post(api.primary(auth, type_="authorize"))
    api.post(api.child(api.ref(), "capture", auth, 1000))
    assert _decision(_reverse(api, auth)) == ("declined", "already_captured")
    charge = api.ref("charge")
    api.post(api.primary(charge))
    api.post(api.child(api.ref(), "refund", charge, 100))
    assert _decision(_reverse(api, charge)) == ("declined", "already_refunded")


def test_reversal_of_an_unseen_reference_declines_the_late_original(api: Api) -> None:
    original = api.ref()
    assert _decision(_reverse(api, original)) == ("approved", None)
    late = api.post(api.primary(original))
    assert late.status_code == 200
    assert _decision(late.json()) == ("declined", "reversed")
    [entry] = api.ledger(original)
    assert _decision(entry) == ("declined", "reversed")


def test_reversal_of_a_held_original_declines_it_at_once(api: Api) -> None:
    original = api.ref()
    try:  # card 1018 is held for the hold duration; give up long before
        api.post(api.primary(original, "4000000000001018"), timeout=0.3)
    except httpx.TimeoutException:
        pass
    assert api.status(original)["status"] == "pending"
    assert _decision(_reverse(api, original)) == ("approved", None)
    assert _decision(api.status(original)) == ("declined", "reversed")
    # Its hold ends without changing the decision.
    repeated = api.post(api.primary(original, "4000000000001018"))
    assert _decision(repeated.json()) == ("declined", "reversed")


def test_reversal_is_idempotent_by_its_own_reference(api: Api) -> None:
    original = api.ref()
    api.post(api.primary(original))
    reference = api.ref("rev")
    first = _reverse(api, original, reference)
    assert first == _reverse(api, original, reference)
    assert len(api.ledger(reference)) == 1
    # Another reversal of the same original finds it reversed already.
    assert _decision(_reverse(api, original)) == ("declined", "already_reversed")
    conflict = api.post(api.child(reference, "reversal", original, 999))
    assert conflict.status_code == 409


def test_status_query_of_a_reversal(api: Api) -> None:
    original = api.ref()
    reference = api.ref("rev")
    assert api.status(reference)["status"] == "not_found"
    _reverse(api, original, reference)
    status = api.status(reference)
    assert (status["status"], status["type"], status["parentReference"]) == (
        "approved",
        "reversal",
        original,
    )


def test_transit_delay_delivers_an_abandoned_request_late(api: Api) -> None:
    original = api.ref()
    api.http.post("/faults", json={"transitDelayMs": 1000})
    try:
        api.post(api.primary(original), timeout=0.3)
    except httpx.TimeoutException:
        pass
    api.http.delete("/faults")
    assert api.status(original)["status"] == "not_found"  # still on its way
    assert _decision(_reverse(api, original)) == ("approved", None)
    [entry] = api.wait_ledger(original)
    assert _decision(entry) == ("declined", "reversed")
