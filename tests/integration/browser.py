"""A real headless browser for tests: Debian's `chromium` driven by Playwright.

Nothing is downloaded at run time (`playwright install` is never used): `make browser`, a
prerequisite of `make test`, installs the distribution's package, and a missing binary fails the
test that needs it instead of skipping it, so CI cannot pass without the browser.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Our machines have a closed network: no GPU, no QUIC, and none of the browser's own background
# traffic (updates, sync, first-run pings) that would only wait on timeouts. Playwright gives
# every launch a fresh temporary profile (the --user-data-dir it passes).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: `make browser` installs Debian's chromium package "
            "(`make test` does it first)",
            pytrace=False,
        )
    return CHROMIUM


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    executable = require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def screenshot_on_failure(page: Page, path: Path) -> AsyncIterator[Page]:
    """On any failure inside the block, save what the page showed (PNG, plus its HTML beside it)
    so the failure can be read, then re-raise."""
    try:
        yield page
    except BaseException:
        try:
            await page.screenshot(path=str(path), full_page=True, timeout=10_000)
            path.with_suffix(".html").write_text(await page.content())
            print(f"\n[browser] failure screenshot: {path}")
        except Exception as error:  # noqa: BLE001 (the original failure matters more)
            print(f"\n[browser] no screenshot: {error!r}")
        raise
