"""The operator's view, in a real browser: the local Temporal Web UI (headless Chromium) on a
charged payment's workflow shows Durapay's search attributes, and shows its history's payloads
decoded by our codec listener (the card's brand and last4, never its number); with the codec
unreachable the same page shows only ciphertext, so the codec is what decodes them."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, Response, expect
from temporalio.client import Client

from client import DurapayClient
from core.settings import Settings
from tests.integration.browser import chromium, require_chromium, screenshot_on_failure
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import charge
from tests.stack import RunningStack

pytestmark = pytest.mark.integration

PAN = CARD_4242["number"]
# How the UI shows a payload it could not decode: its metadata as stored, base64.
ENCRYPTED_ENCODING = base64.b64encode(b"binary/encrypted").decode()
UPDATE_ACCEPTED = "Workflow Execution Update Accepted"  # the event carrying confirm_charge's input
BROWSER_BUDGET_SECONDS = 60  # the whole browser part, once the stack is up
WAIT_MS = 20_000  # the UI renders in a second or two; it polls, so we wait for what we need


def ui_origin(stack: RunningStack) -> str:
    return f"http://127.0.0.1:{stack.env['DURAPAY_TEMPORAL_UI_PORT']}"


def codec_endpoint(stack: RunningStack) -> str:
    return f"http://127.0.0.1:{stack.env['DURAPAY_CODEC_PORT']}/codec"


def namespace(stack: RunningStack) -> str:
    """The namespace the stack's processes use (the launcher is given no other)."""
    default = Settings.model_fields["temporal_namespace"].default
    return stack.env.get("DURAPAY_TEMPORAL_NAMESPACE", default)


async def charged_workflow(durapay: DurapayClient, temporal: Client) -> tuple[str, str]:
    """A payment charged with the test card: its workflow id (the intent's id) and run id."""
    intent = await create_intent(durapay)
    charged = await charge(durapay, intent["id"], CARD_4242)
    assert charged.status_code == 200, charged.text
    assert charged.json()["card"]["last4"] == "4242"
    description = await temporal.get_workflow_handle(intent["id"]).describe()
    return intent["id"], description.run_id


async def open_page(context: BrowserContext) -> Page:
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    return page


async def body_text(page: Page) -> str:
    return await page.locator("body").inner_text()


async def expect_text(page: Page, text: str) -> None:
    await expect(page.locator("body")).to_contain_text(text, use_inner_text=True, timeout=WAIT_MS)


async def show_update_accepted(page: Page, workflow_url: str) -> None:
    """The history tab with the confirm_charge Update's event expanded (its input shown)."""
    await page.goto(f"{workflow_url}/history")
    await page.get_by_text(UPDATE_ACCEPTED).click()
    await expect_text(page, '"confirm_charge"')


def decoded_payload_texts(answers: list[dict[str, Any]]) -> list[str]:
    return [
        base64.b64decode(payload.get("data", "")).decode(errors="replace")
        for answer in answers
        for payload in answer["payloads"]
    ]


async def test_web_ui_shows_search_attributes_and_history_decoded_by_the_codec(
    stack: RunningStack,
    durapay: DurapayClient,
    merchant: dict[str, Any],
    temporal: Client,
    tmp_path: Path,
) -> None:
    require_chromium()  # before charging anything: fails (never skips) without the browser
    workflow_id, run_id = await charged_workflow(durapay, temporal)
    workflow_url = (
        f"{ui_origin(stack)}/namespaces/{namespace(stack)}/workflows/{workflow_id}/{run_id}"
    )
    decode_url = f"{codec_endpoint(stack)}/decode"
    started = time.monotonic()
    async with asyncio.timeout(BROWSER_BUDGET_SECONDS), chromium() as browser:
        # With the codec: the page as an operator sees it.
        context = await browser.new_context(viewport={"width": 1600, "height": 2000})
        page = await open_page(context)
        codec_answers: list[Response] = []

        def record(response: Response) -> None:
            if response.request.method == "POST" and response.url.startswith(decode_url):
                codec_answers.append(response)

        page.on("response", record)
        async with screenshot_on_failure(page, tmp_path / "web-ui-decoded.png"):
            await page.goto(f"{workflow_url}/search-attributes")
            await expect_text(page, f'"DurapayMerchantId": "{merchant["id"]}"')
            await expect_text(page, '"DurapayStatus": "succeeded"')
            await expect_text(page, '"DurapayAmount": 2499')
            await expect_text(page, '"DurapayCurrency": "usd"')

            await show_update_accepted(page, workflow_url)
            await expect_text(page, '"last4": "4242"')
            await expect_text(page, '"brand": "visa"')
            # The workflow's start input, in the page's Input panel, decoded too.
            await expect_text(page, f'"payment_intent_id": "{workflow_id}"')
            text, html = await body_text(page), await page.content()
            assert PAN not in text and PAN not in html
            assert ENCRYPTED_ENCODING not in text, "a payload was left encoded"
            # What the browser itself received from the codec: every payload of the history it
            # asked for, in clear, and still no card number.
            assert codec_answers, f"the page never called {decode_url}"
            assert all(answer.ok for answer in codec_answers), [
                (answer.status, answer.url) for answer in codec_answers
            ]
            decoded = decoded_payload_texts([await answer.json() for answer in codec_answers])
            assert any('"last4":"4242"' in payload.replace(" ", "") for payload in decoded)
            assert not any(PAN in payload for payload in decoded)
        await context.close()

        # Without the codec (unreachable from this browser): the same event, ciphertext only.
        context = await browser.new_context(viewport={"width": 1600, "height": 2000})
        await context.route(f"{codec_endpoint(stack)}/**", lambda route: route.abort())
        page = await open_page(context)
        async with screenshot_on_failure(page, tmp_path / "web-ui-encoded.png"):
            await show_update_accepted(page, workflow_url)
            await expect_text(page, ENCRYPTED_ENCODING)
            text = await body_text(page)
            assert "last4" not in text and '"brand"' not in text
        await context.close()
    print(f"\n[web-ui] browser part took {time.monotonic() - started:.1f} s")
