"""The Web UI's codec endpoint on the local stack: its own listener on loopback (never the API's
port), which the Web UI is pointed at; the UI's origin gets payloads in clear, any other origin
gets no CORS grant, and what it decodes is what our processes stored. Run on its own, it refuses
a non-loopback bind without a token, and with a token it answers only requests that carry it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psutil
import pytest
from temporalio.client import Client

from client import DurapayClient
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge
from tests.stack import RunningStack, free_port, stop_process

pytestmark = pytest.mark.integration


async def stored_start_input(stack: RunningStack, durapay: DurapayClient) -> tuple[str, Any]:
    """A charged intent's id and its workflow's start input as Temporal holds it (ciphertext)."""
    intent = await create_intent(durapay)
    assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200
    raw = await Client.connect(stack.temporal_address)  # no codec: what the server holds
    history = (await raw.get_workflow_handle(intent["id"]).fetch_history()).to_json_dict()
    stored = history["events"][0]["workflowExecutionStartedEventAttributes"]["input"]
    assert intent["id"] not in base64.b64decode(stored["payloads"][0]["data"]).decode(
        errors="replace"
    )
    return intent["id"], stored


async def test_web_ui_decodes_history_through_the_codec_listener(
    stack: RunningStack, durapay: DurapayClient
) -> None:
    intent_id, stored = await stored_start_input(stack, durapay)
    ui_port = stack.env["DURAPAY_TEMPORAL_UI_PORT"]
    ui_origin = f"http://127.0.0.1:{ui_port}"
    codec_port = stack.env["DURAPAY_CODEC_PORT"]
    async with httpx.AsyncClient(timeout=10) as http:
        # What the UI tells the browser to call (it calls the endpoint itself, from the page).
        ui_settings = (await http.get(f"{ui_origin}/api/v1/settings")).json()
        endpoint = ui_settings["Codec"]["Endpoint"]
        assert endpoint == f"http://127.0.0.1:{codec_port}/codec"
        preflight = await http.options(
            f"{endpoint}/decode",
            headers={"Origin": ui_origin, "Access-Control-Request-Method": "POST"},
        )
        decoded = await http.post(
            f"{endpoint}/decode",
            json=stored,
            headers={"Origin": ui_origin, "X-Namespace": "default"},
        )
        foreign = await http.post(
            f"{endpoint}/decode", json=stored, headers={"Origin": "https://evil.example"}
        )
    assert preflight.headers["access-control-allow-origin"] == ui_origin
    assert decoded.status_code == 200
    assert decoded.headers["access-control-allow-origin"] == ui_origin
    [payload] = decoded.json()["payloads"]
    assert json.loads(base64.b64decode(payload["data"]))["payment_intent_id"] == intent_id
    assert "access-control-allow-origin" not in foreign.headers


async def test_codec_is_not_on_the_api_port_and_listens_on_loopback_only(
    stack: RunningStack, durapay: DurapayClient
) -> None:
    _, stored = await stored_start_input(stack, durapay)
    ui_origin = f"http://127.0.0.1:{stack.env['DURAPAY_TEMPORAL_UI_PORT']}"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        on_api = await http.post("/codec/decode", json=stored, headers={"Origin": ui_origin})
    assert on_api.status_code == 404
    assert "payment_intent_id" not in on_api.text
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(stack.child_pid("codec")).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", int(stack.env["DURAPAY_CODEC_PORT"]))}


def codec_env(stack: RunningStack, **variables: str) -> dict[str, str]:
    return {
        **{k: v for k, v in stack.env.items() if not k.startswith("DURAPAY_CODEC_")},
        "DURAPAY_MASTER_KEY": base64.b64encode(stack.master_key()).decode(),
        **variables,
    }


@contextmanager
def codec_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "api.codec_app"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_process(process)
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            stream.close()


def test_codec_refuses_to_start_on_a_public_address_without_a_token(stack: RunningStack) -> None:
    port = free_port()
    env = codec_env(stack, DURAPAY_CODEC_HOST="0.0.0.0", DURAPAY_CODEC_PORT=str(port))
    with codec_process(env) as process:
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert b"refusing to start" in err and b"DURAPAY_CODEC_TOKEN" in err


async def test_codec_with_a_token_answers_only_requests_that_present_it(
    stack: RunningStack, durapay: DurapayClient
) -> None:
    intent_id, stored = await stored_start_input(stack, durapay)
    port = free_port()
    token = "codec-" + os.urandom(12).hex()
    env = codec_env(stack, DURAPAY_CODEC_PORT=str(port), DURAPAY_CODEC_TOKEN=token)
    url = f"http://127.0.0.1:{port}"
    with codec_process(env) as process:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:

            async def up() -> bool:
                assert process.poll() is None, "the codec listener exited"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await assert_eventually(up, timeout=60)
            without = await http.post("/codec/decode", json=stored)
            wrong = await http.post(
                "/codec/decode", json=stored, headers={"Authorization": "Bearer not-" + token}
            )
            right = await http.post(
                "/codec/decode", json=stored, headers={"Authorization": f"Bearer {token}"}
            )
    assert (without.status_code, wrong.status_code) == (401, 401)
    assert intent_id not in without.text + wrong.text
    [payload] = right.json()["payloads"]
    assert json.loads(base64.b64decode(payload["data"]))["payment_intent_id"] == intent_id
