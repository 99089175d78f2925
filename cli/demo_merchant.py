"""The demo merchant of a state dir: onboarded through the local API on first use, then kept.

Its own module because both `durapay dev` (`cli/devstack.py`, which prints its keys in the
banner) and the client commands of `cli/main.py` (`request`, `tour`) need it; `cli/main.py` also
starts the dev stack, so neither may import the other for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from cli.failures import API_CONNECTION_ERRORS, ApiUnreachable, Refused
from core.secret_files import read_secret, write_secret
from core.settings import Settings

DEMO_MERCHANT_FILE = "demo-merchant.json"


class NoDemoMerchant(RuntimeError):
    """Production has no demo merchant."""


class AdminRequestRefused(Refused):
    """The API refused an operator request (`POST /merchants`): the message says why and what
    to do, from the API's error object."""


def api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


async def create_merchant(settings: Settings, name: str, url: str | None = None) -> dict[str, Any]:
    """Onboard a merchant through the API at `url` (default: the local stack's) with the
    operator's admin token; its keys as the API answers them (the secret key only this once)."""
    url = url or api_url(settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        try:
            response = await http.post(
                "/merchants",
                json={"name": name},
                headers={"Authorization": f"Bearer {settings.resolved_admin_token()}"},
            )
        except API_CONNECTION_ERRORS as error:
            raise ApiUnreachable(url, error) from error
    if response.status_code >= 400:
        raise AdminRequestRefused(_refusal(settings, url, response))
    return response.json()


def _refusal(settings: Settings, url: str, response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    said = (
        ": ".join(str(part) for part in (error.get("code"), error.get("message")) if part)
        or response.reason_phrase
    )
    refused = f"the API at {url} refused POST /merchants: HTTP {response.status_code} {said}"
    if response.status_code == 401:
        where = (
            "DURAPAY_ADMIN_TOKEN"
            if settings.admin_token
            else f"the token in {settings.home_dir / 'admin-token'} (DURAPAY_HOME)"
        )
        return (
            f"{refused}. Fix: use the admin token the API was started with: {where} is not "
            "it (set DURAPAY_ADMIN_TOKEN, or DURAPAY_HOME to the API's state dir)"
        )
    return refused


async def demo_merchant(settings: Settings) -> dict[str, Any]:
    """The demo merchant of this state dir, onboarded on first use and kept (mode 600: the file
    holds its secret key). Never in production, where every merchant is onboarded on purpose."""
    if settings.env == "production":
        raise NoDemoMerchant(
            "DURAPAY_ENV=production has no demo merchant: onboard one with "
            "`durapay merchant create NAME --save-profile NAME`, then pass "
            "--profile NAME (or DURAPAY_PUBLIC_KEY and DURAPAY_SECRET_KEY)"
        )
    path: Path = settings.home_dir / DEMO_MERCHANT_FILE
    stored = read_secret(path)
    if stored is not None:
        return json.loads(stored)
    merchant = await create_merchant(settings, "Demo merchant")
    write_secret(path, json.dumps(merchant, indent=2))
    return merchant
