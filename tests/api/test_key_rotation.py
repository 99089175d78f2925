"""Key rotation with configured keys (DURAPAY_MASTER_KEY), as production does it: every process
restarts with a new DURAPAY_MASTER_KEY and the old one in DURAPAY_RETIRED_MASTER_KEYS, then
`durapay keys rotate --reencrypt-only` moves what is at rest to the new key, after which the
old key is needed at rest no more. On a database of its own: it re-encrypts every row."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from cli import keys
from core.crypto import Cipher
from core.keyring import KeyRing, MasterKey, Purpose, encode_key, new_master_key
from core.settings import Settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN, CARD_4242, PUBLIC_URL, Merchant

pytestmark = pytest.mark.api

AT_REST = (
    ("merchant_key", "secret_ciphertext"),
    ("webhook_endpoint", "secret_ciphertext"),
    ("webhook_endpoint", "previous_secret_ciphertext"),
    ("card_token", "pan_ciphertext"),
)


def _settings(
    tmp_path: Path, url: str, temporal_env: WorkflowEnvironment, current: bytes, *retired: bytes
) -> Settings:
    """A process's settings after a (re)start with these keys configured."""
    return Settings(
        home=tmp_path / "home",
        database_url=url,
        admin_token=ADMIN_TOKEN,
        temporal_address=temporal_env.client.service_client.config.target_host,
        master_key=encode_key(current),
        retired_master_keys=",".join(encode_key(k) for k in retired),
        charge_wait_seconds=0.5,
        task_queue=f"keys-{uuid.uuid4().hex[:8]}",
    )


@asynccontextmanager
async def _api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
        ) as http,
    ):
        yield http


async def _key_ids(db: asyncpg.Connection) -> set[str]:
    found: set[str] = set()
    for table, column in AT_REST:
        for row in await db.fetch(
            f"SELECT {column} AS blob FROM {table} WHERE {column} IS NOT NULL"
        ):
            found.add(bytes(row["blob"])[1:9].hex())
    return found


async def test_rotation_with_configured_keys_moves_everything_at_rest_to_the_new_key(
    tmp_path: Path,
    scratch_url: str,
    temporal_env: WorkflowEnvironment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = new_master_key(), new_master_key()
    before = _settings(tmp_path, scratch_url, temporal_env, old)
    async with _api(before) as http:
        onboarded = (await http.post("/merchants", json={"name": "Keys"}, headers=ADMIN)).json()
        merchant = Merchant(http, onboarded["id"], onboarded["publicKey"], onboarded["secretKey"])
        endpoint = (
            await merchant.post(
                "/webhook-endpoints", {"url": PUBLIC_URL, "enabledEvents": ["payment.succeeded"]}
            )
        ).json()
        rotated = (
            await merchant.post(
                f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 3600}
            )
        ).json()
        intent = await merchant.create_intent()
        # No worker: the charge leaves its card number held, as an unanswered attempt does.
        response = await merchant.post(
            f"/payment-intents/{intent['id']}/transactions", {"type": "charge", "card": CARD_4242}
        )
        assert response.status_code == 503, response.text

    db = await asyncpg.connect(scratch_url)
    try:
        assert await _key_ids(db) == {MasterKey(old).key_id}
        after = _settings(tmp_path, scratch_url, temporal_env, new, old)
        assert await keys.rotate(after, reencrypt_only=True) == keys.EXIT_OK
        assert await _key_ids(db) == {MasterKey(new).key_id}
        assert await keys.status(after) == keys.EXIT_OK
        capsys.readouterr()
        assert await keys.rotate(after, reencrypt_only=True) == keys.EXIT_OK
        rewritten = [
            line.split()[-1]
            for line in capsys.readouterr().out.splitlines()
            if "re-encrypted" in line
        ]
        assert rewritten == ["0", "0", "0", "0"]  # nothing left to do

        # The webhook secrets are the ones the merchant holds, under the new key alone.
        only_new = Cipher(KeyRing(new), Purpose.WEBHOOK_SECRETS)
        row = await db.fetchrow(
            "SELECT secret_ciphertext, previous_secret_ciphertext "
            "FROM webhook_endpoint WHERE id = $1",
            endpoint["id"],
        )
        assert (
            only_new.decrypt(row["secret_ciphertext"], context=endpoint["id"]).decode()
            == rotated["secret"]
        )
        assert (
            only_new.decrypt(row["previous_secret_ciphertext"], context=endpoint["id"]).decode()
            == endpoint["secret"]
        )
    finally:
        await db.close()

    # A process that no longer holds the old key at all still verifies the merchant's
    # signature, and its merchant's card numbers are still readable.
    async with _api(_settings(tmp_path, scratch_url, temporal_env, new)) as http:
        signed = Merchant(http, merchant.id, merchant.public_key, merchant.secret_key)
        listed = await signed.get("/payment-intents")
        assert listed.status_code == 200, listed.text
        assert [i["id"] for i in listed.json()["data"]] == [intent["id"]]


async def test_status_exits_2_while_rows_at_rest_need_a_retired_key(
    tmp_path: Path,
    scratch_url: str,
    temporal_env: WorkflowEnvironment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`status` names what still needs a retired key, and exits 2 until nothing does."""
    old, new = new_master_key(), new_master_key()
    async with _api(_settings(tmp_path, scratch_url, temporal_env, old)) as http:
        assert (
            await http.post("/merchants", json={"name": "Keys"}, headers=ADMIN)
        ).status_code == 201
    after = _settings(tmp_path, scratch_url, temporal_env, new, old)
    assert await keys.status(after) == keys.EXIT_PENDING
    out = capsys.readouterr().out
    assert f"retired master key  {MasterKey(old).key_id}" in out
    assert await keys.rotate(after, reencrypt_only=True) == keys.EXIT_OK
    assert await keys.status(after) == keys.EXIT_OK
