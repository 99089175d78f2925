"""The codec listener's rules, on the app in process: loopback only without a token, the token
whenever one is set, CORS for the Web UI's origins, nothing of it on the merchant API."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from starlette.types import ASGIApp
from temporalio.api.common.v1 import Payload, Payloads

from api import codec_app
from api.codec_app import CodecRefused, create_codec_app, is_loopback, startup_refusal
from api.main import create_app
from core.codec import PayloadEncryptionCodec
from core.settings import Settings

KEY = b"m" * 32
MASTER_KEY = base64.b64encode(KEY).decode()
UI_ORIGIN = "http://127.0.0.1:8233"


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        home=tmp_path / "home",
        master_key=MASTER_KEY,
        admin_token="admin",
        temporal_ui_port=8233,
        **overrides,
    )


async def encrypted_body() -> str:
    [stored] = await PayloadEncryptionCodec(KEY).encode(
        [Payload(metadata={"encoding": b"json/plain"}, data=b'{"amount": 2499}')]
    )
    return json_format.MessageToJson(Payloads(payloads=[stored]))


async def post_decode(
    app: ASGIApp, *, base_url: str = "http://127.0.0.1:8089", headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as http:
        return await http.post(
            "/codec/decode",
            content=await encrypted_body(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )


def decoded_data(response: httpx.Response) -> dict[str, object]:
    [payload] = response.json()["payloads"]
    return json.loads(base64.b64decode(payload["data"]))


async def test_decode_on_loopback_answers_the_web_ui_origin_only(tmp_path: Path) -> None:
    app = create_codec_app(settings_for(tmp_path))
    from_ui = await post_decode(app, headers={"Origin": UI_ORIGIN, "X-Namespace": "default"})
    assert from_ui.status_code == 200
    assert decoded_data(from_ui) == {"amount": 2499}
    assert from_ui.headers["access-control-allow-origin"] == UI_ORIGIN
    assert from_ui.headers["cache-control"] == "no-store"
    foreign = await post_decode(app, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8089"
    ) as http:
        preflight = await http.options(
            "/codec/decode", headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]


async def test_without_a_token_only_loopback_requests_are_answered(tmp_path: Path) -> None:
    app = create_codec_app(settings_for(tmp_path))
    # Arrived on another address (someone served the app on 0.0.0.0 with their own server).
    assert (await post_decode(app, base_url="http://10.1.2.3:8089")).status_code == 403
    # A page that rebound its own name to 127.0.0.1: loopback address, foreign host name.
    rebound = await post_decode(app, headers={"Host": "evil.example:8089"})
    assert rebound.status_code == 403
    assert (await post_decode(app, headers={"Host": "localhost:8089"})).status_code == 200


async def test_with_a_token_every_request_must_present_it(tmp_path: Path) -> None:
    app = create_codec_app(settings_for(tmp_path, codec_token="codec-secret"))
    missing = await post_decode(app)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await post_decode(app, headers={"Authorization": "Bearer codec-secreT"})
    assert wrong.status_code == 401
    right = await post_decode(
        app, base_url="http://10.1.2.3:8089", headers={"Authorization": "Bearer codec-secret"}
    )
    assert right.status_code == 200 and decoded_data(right) == {"amount": 2499}


def test_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    assert startup_refusal(settings_for(tmp_path)) is None  # the default: 127.0.0.1
    for host in ("localhost", "::1", "127.0.0.2"):
        assert startup_refusal(settings_for(tmp_path, codec_host=host)) is None, host
    for host in ("0.0.0.0", "::", "10.0.0.5", "codec.internal"):
        refusal = startup_refusal(settings_for(tmp_path, codec_host=host))
        assert refusal is not None and "DURAPAY_CODEC_TOKEN" in refusal, host
        assert startup_refusal(settings_for(tmp_path, codec_host=host, codec_token="t")) is None
    assert not is_loopback("[::ffff:10.0.0.1]")


def test_main_refuses_a_public_bind_without_a_token_before_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        codec_app, "get_settings", lambda: settings_for(tmp_path, codec_host="0.0.0.0")
    )

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("uvicorn.run must not be reached")

    monkeypatch.setattr(codec_app.uvicorn, "run", never)
    assert codec_app.main() == 2
    assert "refusing to start" in capsys.readouterr().err


def test_production_has_no_codec_listener(tmp_path: Path) -> None:
    # Secrets that production takes (tests/unit/test_production_settings.py).
    settings = Settings(
        home=tmp_path / "home",
        env="production",
        codec_token="t",
        master_key=base64.b64encode(hashlib.sha256(b"codec key").digest()).decode(),
        admin_token=hashlib.sha256(b"codec admin token").hexdigest(),
        temporal_api_key="tc-key",
    )
    assert startup_refusal(settings) is not None
    with pytest.raises(CodecRefused, match="production"):
        create_codec_app(settings)


@pytest.mark.processes
async def test_merchant_api_has_no_codec_route(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, database_url="postgresql://u:p@db/x"))
    assert "/payment-intents" in app.openapi()["paths"]
    answer = await post_decode(app, base_url="http://127.0.0.1:8000", headers={"Origin": UI_ORIGIN})
    assert answer.status_code == 404


async def test_a_payload_in_clear_is_shown_as_it_is(tmp_path: Path) -> None:
    # Workers refuse it (core/codec.py, strict); the operator's view still shows what it says.
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"forged": true}')
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_codec_app(settings_for(tmp_path))),
        base_url="http://127.0.0.1:8089",
    ) as http:
        response = await http.post(
            "/codec/decode",
            content=json_format.MessageToJson(Payloads(payloads=[plain])),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200
    assert decoded_data(response) == {"forged": True}
