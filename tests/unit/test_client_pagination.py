"""List iterators follow `startingAfter` until `hasMore` is false; models tolerate fields a
newer API adds."""

from __future__ import annotations

from typing import Any

import httpx

from client import Durapay, PaymentIntent

IDS = [f"pi_{n}" for n in range(7, 0, -1)]  # newest first


def intent(intent_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amountInCents": 100,
        "currency": "usd",
        "status": "created",
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:00Z",
        **extra,
    }


class PagedApi:
    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        self.queries.append(query)
        limit = int(query.get("limit", "10"))
        start = IDS.index(query["startingAfter"]) + 1 if "startingAfter" in query else 0
        page = IDS[start : start + limit]
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [intent(i) for i in page],
                "hasMore": start + limit < len(IDS),
            },
        )

    def durapay(self) -> Durapay:
        return Durapay(
            "http://durapay.test", "pk", "sk", transport=httpx.MockTransport(self.handle)
        )


async def test_iteration_follows_starting_after_over_every_page() -> None:
    api = PagedApi()
    async with api.durapay() as durapay:
        seen = [pi.id async for pi in durapay.payment_intents.list(limit=3, status="created")]
    assert seen == IDS
    assert [q.get("startingAfter") for q in api.queries] == [None, "pi_5", "pi_2"]
    assert all(q["limit"] == "3" and q["status"] == "created" for q in api.queries)


async def test_nothing_is_requested_before_iterating_and_to_list_stops_early() -> None:
    api = PagedApi()
    async with api.durapay() as durapay:
        pager = durapay.payment_intents.list(limit=3)
        assert api.queries == []
        assert [pi.id for pi in await pager.to_list(max_items=4)] == IDS[:4]
        assert len(api.queries) == 2  # the third page is never asked for
        page = await durapay.payment_intents.list(limit=2, starting_after="pi_3").first_page()
    assert [pi.id for pi in page.data] == ["pi_2", "pi_1"] and page.has_more is False


def test_models_keep_fields_a_newer_api_adds_and_read_camel_case() -> None:
    parsed = PaymentIntent.model_validate(
        intent("pi_1", amountReceived=100, riskScore=12, status="a_new_status")
    )
    assert parsed.amount_received == 100 and parsed.status == "a_new_status"
    assert parsed.model_extra == {"riskScore": 12}
    assert parsed.to_dict()["riskScore"] == 12 and parsed.to_dict()["amountInCents"] == 100
