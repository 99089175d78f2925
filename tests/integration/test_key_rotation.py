"""`durapay keys rotate` on a running stack of its own: everything at rest moves to the new
master key while the API and the worker keep running (they follow the key files), signed
requests still verify, webhooks still sign with the secrets merchants hold, charges go on, and
a second run finds nothing left to do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.client import ScheduleActionStartWorkflow

from client import DurapayClient
from core.codec import KEY_ID_METADATA, PayloadKey
from core.crypto import Cipher, VaultCipher
from core.keyring import MasterKey, Purpose
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge, own_stack, signed_merchant
from tests.integration.webhook_receiver import WebhookReceiver
from tests.stack import BIN, RunningStack
from workers.schedules import RECONCILIATION_SCHEDULE_ID, WEBHOOK_REAPER_SCHEDULE_ID

pytestmark = pytest.mark.integration

# Every encrypted column at rest: (table, id column, ciphertext column).
AT_REST = (
    ("merchant_key", "public_key", "secret_ciphertext"),
    ("webhook_endpoint", "id", "secret_ciphertext"),
    ("webhook_endpoint", "id", "previous_secret_ciphertext"),
    ("card_token", "id", "pan_ciphertext"),
)


@pytest.fixture(scope="module")
def keys_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "keys") as running:
        yield running


@pytest.fixture(scope="module")
async def keys_db(keys_stack: RunningStack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(keys_stack.database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def shop(keys_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(keys_stack, f"Keys {uuid.uuid4().hex[:6]}") as client:
        yield client


def _keys_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "durapay"), "keys", *args],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


async def _key_ids_at_rest(db: asyncpg.Pool) -> set[str]:
    """The master key id each ciphertext at rest names (`legacy`: none)."""
    found: set[str] = set()
    for table, _, column in AT_REST:
        for row in await db.fetch(
            f"SELECT {column} AS blob FROM {table} WHERE {column} IS NOT NULL"
        ):
            blob = bytes(row["blob"])
            found.add(blob[1:9].hex() if blob[0] in (1, 2) else "legacy")  # 2: card vault
    return found


async def _held_token(
    stack: RunningStack,
    db: asyncpg.Pool,
    merchant_id: str,
    *,
    legacy: bool = False,
    age: str = "1 minute",
) -> str:
    """A card number still held in the vault, as a charge request that never reached its
    workflow leaves it, `age` ago; `legacy`: in the format from before key ids."""
    token_id = f"card_{uuid.uuid4().hex}"
    keys = stack.key_ring()
    if legacy:
        nonce = os.urandom(12)
        blob = nonce + AESGCM(keys.current.material).encrypt(
            nonce, CARD_4242["number"].encode(), token_id.encode()
        )
    else:
        blob = Cipher(keys, Purpose.VAULT).encrypt(CARD_4242["number"].encode(), context=token_id)
    await db.execute(
        "INSERT INTO card_token (id, merchant_id, pan_ciphertext, brand, last4, exp_month, "
        f"exp_year, created_at) VALUES ($1, $2, $3, 'visa', '4242', 12, 2030, "
        f"now() - interval '{age}')",
        token_id,
        merchant_id,
        blob,
    )
    return token_id


async def test_rotate_moves_everything_at_rest_to_a_new_key_while_the_stack_runs(
    keys_stack: RunningStack, keys_db: asyncpg.Pool, shop: DurapayClient
) -> None:
    old = keys_stack.key_ring().current
    merchant_id = await keys_db.fetchval(
        "SELECT merchant_id FROM merchant_key WHERE public_key = $1", shop.public_key
    )
    with WebhookReceiver() as receiver:
        created = await shop.post(
            "/webhook-endpoints",
            {"url": receiver.url("/hooks"), "enabledEvents": ["payment.succeeded"]},
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        # Rotated with a grace period: the previous secret is at rest too, and still signs.
        rotated = await shop.post(
            f"/webhook-endpoints/{endpoint['id']}/rotate-secret", {"gracePeriodSeconds": 3600}
        )
        assert rotated.status_code == 200, rotated.text
        secrets = [rotated.json()["secret"], endpoint["secret"]]
        held = [
            await _held_token(keys_stack, keys_db, merchant_id, legacy=legacy)
            for legacy in (False, True)
        ]
        # Held longer than any authorization can need it: deleted, not re-encrypted.
        stale = await _held_token(keys_stack, keys_db, merchant_id, age="2 days")
        assert await _key_ids_at_rest(keys_db) == {old.key_id, "legacy"}

        done = await asyncio.to_thread(_keys_cli, keys_stack, "rotate")
        assert done.returncode == 0, done.stdout + done.stderr
        assert await keys_db.fetchval(
            "SELECT pan_ciphertext IS NULL AND pan_deleted_at IS NOT "
            "NULL FROM card_token WHERE id = $1",
            stale,
        )

        new = keys_stack.key_ring().current
        assert new.key_id != old.key_id
        assert [k.key_id for k in keys_stack.key_ring().retired] == [old.key_id]
        assert await _key_ids_at_rest(keys_db) == {new.key_id}
        vault = VaultCipher(keys_stack.key_ring(), keys_stack.settings().vault_epoch_keys())
        for token_id in held:  # the held card numbers are still there, readable
            blob = bytes(
                await keys_db.fetchval(
                    "SELECT pan_ciphertext FROM card_token WHERE id = $1", token_id
                )
            )
            assert blob[0] == 2  # in an epoch now, as every card number the stack writes
            assert vault.decrypt(blob, context=token_id) == CARD_4242["number"].encode()

        # The running API verifies the merchant's signature with its re-encrypted secret, the
        # running worker sends the card it reads from the vault, and the delivery it makes is
        # signed with both secrets the merchant holds.
        intent = await create_intent(shop)
        response = await charge(shop, intent["id"], CARD_4242)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"

        async def delivered() -> Any:
            return next((r for r in receiver.requests if intent["id"] in r.body.decode()), None)

        request = await assert_eventually(delivered)
        for secret in secrets:  # the Standard Webhooks library checks each signature
            assert request.verify(secret)["type"] == "payment.succeeded"

    # What the stack wrote after the rotation is under the new key too.
    assert await _key_ids_at_rest(keys_db) == {new.key_id}
    status = await asyncio.to_thread(_keys_cli, keys_stack, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"current master key  {new.key_id}" in status.stdout
    assert f"retired master key  {old.key_id}" in status.stdout

    # The sweep's and the webhook reaper's schedules store their inputs too: re-encoded, and
    # the workers still read them.
    assert "Temporal schedules re-encoded                   2" in done.stdout, done.stdout
    temporal = await keys_stack.temporal_client()
    reaper = await temporal.get_schedule_handle(WEBHOOK_REAPER_SCHEDULE_ID).describe()
    assert isinstance(reaper.schedule.action, ScheduleActionStartWorkflow)
    assert [arg.metadata[KEY_ID_METADATA] for arg in reaper.schedule.action.args] == [
        PayloadKey(new.material).key_id
    ]
    schedule = temporal.get_schedule_handle(RECONCILIATION_SCHEDULE_ID)
    action = (await schedule.describe()).schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert [arg.metadata[KEY_ID_METADATA] for arg in action.args] == [
        PayloadKey(new.material).key_id
    ]
    runs_before = await keys_db.fetchval(
        "SELECT count(*) FROM reconciliation_run WHERE trigger = 'schedule'"
    )
    await schedule.trigger()

    async def swept() -> bool:
        return bool(
            await keys_db.fetchval(
                "SELECT count(*) FROM reconciliation_run WHERE trigger = 'schedule'"
            )
            > runs_before
        )

    await assert_eventually(swept, timeout=60)

    # Nothing left to do: a second run rewrites nothing.
    again = await asyncio.to_thread(_keys_cli, keys_stack, "rotate", "--reencrypt-only")
    assert again.returncode == 0, again.stdout + again.stderr
    rewritten = [
        line.split()[-1]
        for line in again.stdout.splitlines()
        if "re-encrypted" in line or "re-encoded" in line
    ]
    assert rewritten == ["0", "0", "0", "0", "0"], again.stdout
    assert MasterKey(keys_stack.master_key()).key_id == new.key_id
