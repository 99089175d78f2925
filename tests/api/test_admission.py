"""Admission control in the app (api/in_flight.py): which answers teach the adaptive limit, and
its metrics. The refusal itself over real HTTP: test_slow_clients.py; a flood of a real API:
tests/integration/test_admission.py."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI

from api.concurrency_limit import AdaptiveConcurrencyLimit
from tests.api.conftest import ADMIN, Merchant
from tests.api.test_metrics import sample, scrape

pytestmark = pytest.mark.api


async def test_only_answers_that_did_their_work_teach_the_limit(
    app: FastAPI, merchant: Merchant
) -> None:
    limit: AdaptiveConcurrencyLimit = app.state.admission
    body = {"amountInCents": 1200, "currency": "usd"}
    key = f"admission-{uuid.uuid4().hex}"
    before = limit.samples
    first = await merchant.post("/payment-intents", body, idempotency_key=key)
    assert first.status_code == 201, first.text
    assert limit.samples == before + 1
    replayed = await merchant.post("/payment-intents", body, idempotency_key=key)
    assert (replayed.status_code, replayed.json()["id"]) == (201, first.json()["id"])
    invalid = await merchant.post("/payment-intents", {"amountInCents": -1, "currency": "usd"})
    assert invalid.status_code == 400
    assert limit.samples == before + 1  # neither the replay nor the refusal
    assert (await merchant.get(f"/payment-intents/{first.json()['id']}")).status_code == 200
    assert limit.samples == before + 2
    assert limit.in_flight == 0


async def test_probes_and_metrics_are_not_counted(app: FastAPI, merchant: Merchant) -> None:
    limit: AdaptiveConcurrencyLimit = app.state.admission
    before = limit.samples
    for path in ("/livez", "/healthz"):
        assert (await merchant.http.get(path)).status_code == 200
    assert (await merchant.http.get("/metrics", headers=ADMIN)).status_code == 200
    assert limit.samples == before


async def test_the_limit_and_its_refusals_are_metrics(app: FastAPI, merchant: Merchant) -> None:
    exposition = await scrape(merchant.http)
    limit: AdaptiveConcurrencyLimit = app.state.admission
    assert sample(exposition, "durapay_api_admission_limit") == limit.current_limit
    assert sample(exposition, "durapay_api_requests_in_flight") == 0
    assert "durapay_api_admission_refusals_total" in exposition
