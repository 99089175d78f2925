"""Requests whose path and query hold percent-escapes, signed by the project's client: the API
verifies them over the path and query as received (`raw_path`, `query_string`), never as
decoded. The same checks run in process (tests/api) and through uvicorn (tests/integration),
whose request line is what the client signed."""

from __future__ import annotations

from client import DurapayClient


async def check_escaped_requests_are_verified(durapay: DurapayClient, intent_id: str) -> None:
    """`intent_id`: the signing merchant's newest intent, status `created`."""
    missing = await durapay.get("/payment-intents/pi_no%2Dsuch%2Dintent")
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["type"] == "not_found"
    escaped_id = intent_id.replace("_", "%5F", 1)
    found = await durapay.get(f"/payment-intents/{escaped_id}")
    assert found.status_code == 200, found.text
    assert found.json()["id"] == intent_id
    listed = await durapay.get("/payment-intents?limit=1%30&status=cr%65ated")
    assert listed.status_code == 200, listed.text
    assert [i["id"] for i in listed.json()["data"]][:1] == [intent_id]
    # httpx escapes the space itself (`%20`): what it sends is what the client signs, so the
    # request is authenticated and then refused for its value.
    events = await durapay.get("/events?type=payment.created&limit=10&startingAfter=a b")
    assert events.status_code == 400, events.text
    assert events.json()["error"]["param"] == "startingAfter"
