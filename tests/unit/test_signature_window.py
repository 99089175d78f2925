"""The timestamp window of a signed request: its refusal names the configured tolerance
(DURAPAY_SIGNATURE_TOLERANCE_SECONDS), so a merchant whose clock drifts reads the real bound."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.requests import Request

from api.authentication import verify_signature
from api.errors import AuthenticationError
from core.settings import Settings


def _request(timestamp: int) -> Request:
    headers = [
        (b"authorization", b"Bearer pk_test_" + b"0" * 32),
        (b"x-timestamp", str(timestamp).encode()),
        (b"x-nonce", b"n" * 16),
        (b"x-signature", b"v1=" + b"0" * 64),
    ]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/payment-intents",
        "raw_path": b"/payment-intents",
        "query_string": b"",
        "headers": headers,
    }
    return Request(scope)


@pytest.mark.parametrize("tolerance", [60, 300])
async def test_a_timestamp_outside_the_window_names_the_configured_tolerance(
    tolerance: int,
) -> None:
    settings = Settings(signature_tolerance_seconds=tolerance)
    # Refused before any key is looked up: no connection and no key cache are needed.
    with pytest.raises(AuthenticationError) as refused:
        await verify_signature(
            _request(int(time.time()) - tolerance - 30),
            connection=None,  # type: ignore[arg-type]
            keys=None,  # type: ignore[arg-type]
            settings=settings,
        )
    assert refused.value.code == "timestamp_out_of_window"
    assert f"more than {tolerance} seconds" in refused.value.message
