"""`GET /metrics` on the API: the admin token only, request counts and latency histograms by
route template (never the path with its ids), method and status."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ADMIN, Merchant

pytestmark = pytest.mark.api


async def scrape(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.text


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "wrong-token", "Bearer "])
async def test_metrics_without_the_admin_token_is_refused(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_token"
    assert "durapay_http" not in response.text


async def test_metrics_with_the_admin_token_is_prometheus_text(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "durapay_http_requests",
        "durapay_http_request_duration_seconds",
        "process_cpu_seconds",
    } <= names
    # The business counters are the workers': the API does not show zeros for them.
    assert "durapay_charges" not in names


async def test_a_request_is_counted_under_its_route_template(
    http: httpx.AsyncClient, merchant: Merchant
) -> None:
    intent = await merchant.create_intent()
    labels = {"route": "/payment-intents/{id}", "method": "GET", "status": "200"}
    before = await scrape(http)
    response = await merchant.get(f"/payment-intents/{intent['id']}")
    assert response.status_code == 200
    after = await scrape(http)
    assert (
        sample(after, "durapay_http_requests_total", **labels)
        == sample(before, "durapay_http_requests_total", **labels) + 1
    )
    assert (
        sample(after, "durapay_http_request_duration_seconds_count", **labels)
        == sample(before, "durapay_http_request_duration_seconds_count", **labels) + 1
    )
    # The histogram holds the request in its finite buckets too (it took well under 30 s).
    assert (
        sample(after, "durapay_http_request_duration_seconds_bucket", le="30.0", **labels)
        == sample(before, "durapay_http_request_duration_seconds_bucket", le="30.0", **labels) + 1
    )
    assert intent["id"] not in after  # no id, anywhere in a label


async def test_a_refused_request_is_counted_with_its_status(http: httpx.AsyncClient) -> None:
    labels = {"route": "/payment-intents", "method": "GET", "status": "401"}
    before = sample(await scrape(http), "durapay_http_requests_total", **labels)
    assert (await http.get("/payment-intents")).status_code == 401
    assert sample(await scrape(http), "durapay_http_requests_total", **labels) == before + 1


async def test_unknown_paths_and_methods_make_no_new_series(http: httpx.AsyncClient) -> None:
    """A client chooses paths and methods: neither may become a label value of its own."""
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    odd_method = {"route": "unmatched", "method": "other", "status": "404"}
    before = await scrape(http)
    assert (await http.get("/nowhere/pi_0123456789abcdef")).status_code == 404
    assert (await http.request("BREW", "/coffee-pot")).status_code == 404
    after = await scrape(http)
    assert (
        sample(after, "durapay_http_requests_total", **unmatched)
        == sample(before, "durapay_http_requests_total", **unmatched) + 1
    )
    assert (
        sample(after, "durapay_http_requests_total", **odd_method)
        == sample(before, "durapay_http_requests_total", **odd_method) + 1
    )
    assert "pi_0123456789abcdef" not in after and "BREW" not in after


async def test_metrics_is_not_part_of_the_merchant_api_schema(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]
