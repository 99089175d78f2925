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

from core.secret_files import read_secret, write_secret
from core.settings import Settings

DEMO_MERCHANT_FILE = "demo-merchant.json"


class NoDemoMerchant(RuntimeError):
    """Production has no demo merchant."""


def api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


async def create_merchant(settings: Settings, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=api_url(settings), timeout=30) as http:
        response = await http.post(
            "/merchants", json={"name": name},
            headers={"Authorization": f"Bearer {settings.resolved_admin_token()}"})
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def demo_merchant(settings: Settings) -> dict[str, Any]:
    """The demo merchant of this state dir, onboarded on first use and kept (mode 600: the file
    holds its secret key). Never in production, where every merchant is onboarded on purpose."""
    if settings.env == "production":
        raise NoDemoMerchant("DURAPAY_ENV=production has no demo merchant: onboard one with "
                             "`durapay merchant create NAME` and use its keys")
    path: Path = settings.home_dir / DEMO_MERCHANT_FILE
    stored = read_secret(path)
    if stored is not None:
        return json.loads(stored)  # type: ignore[no-any-return]
    merchant = await create_merchant(settings, "Demo merchant")
    write_secret(path, json.dumps(merchant, indent=2))
    return merchant
