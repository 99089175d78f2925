"""The Web UI's codec endpoint on the local stack: the UI's origin gets payloads in clear,
any other origin gets no CORS grant, and what it decodes is what our processes stored."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from temporalio.client import Client

from client import DurapayClient
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import charge
from tests.stack import RunningStack

pytestmark = pytest.mark.integration


async def test_codec_endpoint_decodes_history_for_the_web_ui(stack: RunningStack,
                                                             durapay: DurapayClient) -> None:
    intent = await create_intent(durapay)
    assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200
    raw = await Client.connect(stack.temporal_address)  # no codec: what the server holds
    history = (await raw.get_workflow_handle(intent["id"]).fetch_history()).to_json_dict()
    stored = history["events"][0]["workflowExecutionStartedEventAttributes"]["input"]
    assert intent["id"] not in base64.b64decode(stored["payloads"][0]["data"]).decode(
        errors="replace")

    ui_origin = f"http://127.0.0.1:{stack.env['DURAPAY_TEMPORAL_UI_PORT']}"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        preflight = await http.options("/codec/decode", headers={
            "Origin": ui_origin, "Access-Control-Request-Method": "POST"})
        decoded = await http.post("/codec/decode", json=stored, headers={
            "Origin": ui_origin, "X-Namespace": "default"})
        foreign = await http.post("/codec/decode", json=stored,
                                  headers={"Origin": "https://evil.example"})
    assert preflight.headers["access-control-allow-origin"] == ui_origin
    assert decoded.status_code == 200
    assert decoded.headers["access-control-allow-origin"] == ui_origin
    [payload] = decoded.json()["payloads"]
    assert json.loads(base64.b64decode(payload["data"]))["payment_intent_id"] == intent["id"]
    assert "access-control-allow-origin" not in foreign.headers
