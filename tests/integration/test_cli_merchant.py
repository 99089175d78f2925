"""The `durapay` command against the real stack, as a merchant other than the demo one: a
merchant onboarded with `--save-profile` signs `request` by its profile or by environment,
`sign`'s headers get real curl (and httpx) through the API's authentication, and a refused
admin token, an error answer or an API that is not there end in one line on stderr."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import BIN, RunningStack, free_port

BODY = '{"amountInCents": 1234, "currency": "eur", "description": "Café ☕"}'


@pytest.fixture
def cli_env(stack: RunningStack, tmp_path: Path) -> dict[str, str]:
    """The stack's environment with profiles under tmp_path."""
    return {**stack.env, "XDG_CONFIG_HOME": str(tmp_path / "config")}


async def durapay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "durapay"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def answer(result: subprocess.CompletedProcess[str]) -> tuple[int, Any]:
    """`durapay request`'s status line and JSON answer."""
    status, _, body = result.stdout.partition("\n")
    return int(status.removeprefix("HTTP ")), json.loads(body)


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("durapay: ")
    return result.stderr


async def test_merchant_create_saves_a_profile_that_request_signs_with(
    cli_env: dict[str, str], tmp_path: Path, merchant: dict[str, Any]
) -> None:
    created = await durapay(cli_env, "merchant", "create", "Acme CLI", "--save-profile", "acme")
    assert created.returncode == 0, created.stderr
    acme = json.loads(created.stdout)
    assert acme["secretKey"].startswith("sk_test_") and "--profile acme" in created.stderr
    profile_file = tmp_path / "config" / "durapay" / "profiles.toml"
    assert stat.S_IMODE(profile_file.stat().st_mode) == 0o600
    status, intent = answer(
        await durapay(cli_env, "request", "POST", "/payment-intents", BODY, "--profile", "acme")
    )
    assert (status, intent["description"]) == (201, "Café ☕")
    own = await durapay(
        cli_env, "request", "GET", f"/payment-intents/{intent['id']}", "--profile", "acme"
    )
    assert answer(own)[0] == 200 and acme["secretKey"] not in own.stdout + own.stderr
    # Another merchant's keys, by environment, see none of it (the demo merchant neither).
    other_env = {
        **cli_env,
        "DURAPAY_PUBLIC_KEY": merchant["publicKey"],
        "DURAPAY_SECRET_KEY": merchant["secretKey"],
    }
    for env in (other_env, cli_env):
        hidden = await durapay(env, "request", "GET", f"/payment-intents/{intent['id']}")
        assert answer(hidden)[0] == 404
        assert "HTTP 404: resource_missing: No such payment_intent" in one_line_failure(hidden)
    listed = await durapay(other_env, "request", "GET", "/payment-intents?limit=5")
    assert answer(listed)[0] == 200 and intent["id"] not in listed.stdout


@pytest.mark.skipif(
    shutil.which("curl") is None,
    reason="no curl on this machine: the httpx variant below checks the same headers",
)
async def test_sign_curl_command_is_accepted_by_the_api(
    cli_env: dict[str, str], merchant: dict[str, Any]
) -> None:
    env = {
        **cli_env,
        "DURAPAY_PUBLIC_KEY": merchant["publicKey"],
        "DURAPAY_SECRET_KEY": merchant["secretKey"],
    }

    async def curl(*args: str) -> tuple[int, Any]:
        signed = await durapay(env, "sign", *args, "--curl")
        assert signed.returncode == 0, signed.stderr
        assert merchant["secretKey"] not in signed.stdout
        ran = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", signed.stdout.strip() + " -w '\n%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        body, _, status = ran.stdout.rpartition("\n")
        return int(status), json.loads(body)

    status, intent = await curl("POST", "/payment-intents", BODY)
    assert (status, intent["amountInCents"], intent["description"]) == (201, 1234, "Café ☕")
    status, page = await curl("GET", "/payment-intents?limit=1&status=created")
    assert (status, [pi["id"] for pi in page["data"]]) == (200, [intent["id"]])


async def test_sign_headers_are_accepted_by_the_api_from_httpx(
    stack: RunningStack, cli_env: dict[str, str], merchant: dict[str, Any]
) -> None:
    env = {
        **cli_env,
        "DURAPAY_PUBLIC_KEY": merchant["publicKey"],
        "DURAPAY_SECRET_KEY": merchant["secretKey"],
    }
    signed = await durapay(env, "sign", "GET", "/payment-intents?limit=1")
    assert signed.returncode == 0, signed.stderr
    headers = dict(shlex.split(line)[1].split(": ", 1) for line in signed.stdout.splitlines())
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        response = await http.get("/payment-intents?limit=1", headers=headers)
        assert response.status_code == 200, response.text
        replayed = await http.get("/payment-intents?limit=1", headers=headers)
        assert replayed.status_code == 401  # one request per signature: the nonce is spent


async def test_refused_admin_token_is_one_line_with_the_fix(cli_env: dict[str, str]) -> None:
    refused = await durapay(
        {**cli_env, "DURAPAY_ADMIN_TOKEN": "not-the-" + os.urandom(8).hex()},
        "merchant",
        "create",
        "Nobody",
        "--save-profile",
        "nobody",
    )
    line = one_line_failure(refused)
    assert "HTTP 401 invalid_admin_token" in line and "set DURAPAY_ADMIN_TOKEN" in line
    assert refused.stdout == ""  # and no profile saved
    listed = await durapay(cli_env, "profile", "list")
    assert "nobody" not in listed.stdout


async def test_error_answers_and_a_missing_api_are_one_line(
    cli_env: dict[str, str], merchant: dict[str, Any]
) -> None:
    wrong_secret = await durapay(
        cli_env,
        "request",
        "GET",
        "/payment-intents",
        "--public-key",
        merchant["publicKey"],
        "--secret-key",
        "sk_test_wrong",
    )
    assert answer(wrong_secret)[0] == 401
    assert "HTTP 401: " in one_line_failure(wrong_secret)
    nowhere = f"http://127.0.0.1:{free_port()}"
    for command in ("request", "tour"):
        unreachable = await durapay(
            cli_env,
            command,
            *(["GET", "/payment-intents"] if command == "request" else []),
            "--public-key",
            merchant["publicKey"],
            "--secret-key",
            merchant["secretKey"],
            "--api-url",
            nowhere,
        )
        assert f"no answer from the API at {nowhere}" in one_line_failure(unreachable)
