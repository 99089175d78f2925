"""A deleted card number is gone for good: once its epoch key is destroyed, nobody recovers it
from what the database keeps on disk (the table's dead row versions, the write-ahead log),
even holding every key that is still held (the master key ring and every epoch key file left).

The attacker reads the raw files of a real PostgreSQL: the `card_token` heap (before any
vacuum: autovacuum is off for it, so every dead row version is still there) and every `pg_wal`
segment. Knowing the format, they look for every ciphertext header naming a master key they
hold, and try every length a card number can have, every key they hold and every token id.
The control in the same test: with the destroyed key kept aside, the same scan recovers every
card number from the heap and from the WAL, so the scan does find them when it can.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.exceptions import InvalidTag
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.card_network import AuthorizeInput, CardNetworkActivities
from api.main import create_app
from cli import keys
from core.crypto import VaultCipher, epoch_of, vault_epoch_aead
from core.db.session import create_engine, session_factory
from core.db.vault import CARD_NUMBER_RETENTION, shred_card_number, shred_stale_card_numbers
from core.errors import ErrorType
from core.keyring import KeyRing, Purpose, encode_key, new_master_key
from core.settings import Settings
from core.vault_epochs import EpochKeys
from tests.api.conftest import ADMIN, ADMIN_TOKEN, CARD_4242, Merchant

pytestmark = pytest.mark.api

CARDS = ("4242424242424242", "5555555555554444", "4000056655665556", "6011111111111117")
PAN_DIGITS = range(12, 20)
TAG_BYTES, NONCE_BYTES = 16, 12


def _settings(tmp_path: Path, url: str, temporal_env: WorkflowEnvironment) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=url,
        admin_token=ADMIN_TOKEN,
        temporal_address=temporal_env.client.service_client.config.target_host,
        master_key=encode_key(new_master_key()),
        charge_wait_seconds=0.5,
        task_queue=f"vault-{uuid.uuid4().hex[:8]}",
    )


@asynccontextmanager
async def _merchant(settings: Settings) -> AsyncIterator[Merchant]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
        ) as http,
    ):
        keys = (await http.post("/merchants", json={"name": "Vault"}, headers=ADMIN)).json()
        yield Merchant(http, keys["id"], keys["publicKey"], keys["secretKey"])


async def _charge_without_outcome(merchant: Merchant, number: str) -> None:
    """A charge through the API, so its card number goes into the vault as every one does;
    no worker runs, so no outcome is recorded (503 after the wait)."""
    intent = await merchant.create_intent()
    response = await merchant.post(
        f"/payment-intents/{intent['id']}/transactions",
        {"type": "charge", "card": {**CARD_4242, "number": number}},
    )
    assert response.status_code == 503, response.text


def _recover(data: bytes, ring: KeyRing, epoch_keys: list[bytes], token_ids: list[str]) -> set[str]:
    """Every card number an attacker decrypts from `data` with these keys."""
    found: set[str] = set()
    for master in ring.keys:
        for version, header_bytes in ((1, 9), (2, 17)):
            prefix = bytes([version]) + master.id_bytes
            start = data.find(prefix)
            while start != -1:
                header = data[start : start + header_bytes]
                nonce = data[start + header_bytes : start + header_bytes + NONCE_BYTES]
                body_at = start + header_bytes + NONCE_BYTES
                if version == 1:  # under the master key alone (before epochs)
                    aeads = [master.aead(Purpose.VAULT)]
                else:
                    epoch = int.from_bytes(header[9:17], "big")
                    aeads = [vault_epoch_aead(master, epoch, key) for key in epoch_keys]
                for aead in aeads:
                    for digits in PAN_DIGITS:
                        body = data[body_at : body_at + digits + TAG_BYTES]
                        for token_id in token_ids:
                            try:
                                found.add(
                                    aead.decrypt(nonce, body, header + token_id.encode()).decode()
                                )
                            except (InvalidTag, ValueError):
                                continue
                start = data.find(prefix, start + 1)
    return found


async def _disk(db: asyncpg.Connection) -> tuple[bytes, bytes]:
    """The `card_token` heap's files and every WAL segment, as they are on disk."""
    await db.execute("CHECKPOINT")  # the heap's pages from shared buffers to its files
    data = Path(await db.fetchval("SHOW data_directory"))
    heap = data / await db.fetchval("SELECT pg_relation_filepath('card_token')")
    heap_files = sorted(heap.parent.glob(heap.name + "*"))  # segments and forks
    wal_files = sorted(p for p in (data / "pg_wal").iterdir() if p.is_file())
    assert heap_files and wal_files
    return (
        b"".join(p.read_bytes() for p in heap_files),
        b"".join(p.read_bytes() for p in wal_files),
    )


async def test_deleted_card_numbers_cannot_be_recovered_from_the_heap_or_the_wal(
    tmp_path: Path, scratch_url: str, temporal_env: WorkflowEnvironment
) -> None:
    settings = _settings(tmp_path, scratch_url, temporal_env)
    db = await asyncpg.connect(scratch_url)
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        # Dead row versions stay in the heap until a vacuum: none here, as after a busy hour.
        await db.execute("ALTER TABLE card_token SET (autovacuum_enabled = false)")
        async with _merchant(settings) as merchant:
            for number in CARDS:
                await _charge_without_outcome(merchant, number)
        token_ids = [r["id"] for r in await db.fetch("SELECT id FROM card_token ORDER BY id")]
        assert len(token_ids) == len(CARDS)

        # Deleted as the vault deletes them: half with their charge's definite outcome, the
        # rest by the retention sweep once a day old.
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            for token_id in token_ids[:2]:
                await shred_card_number(session, token_id)
        a_day_later = datetime.now(UTC) + CARD_NUMBER_RETENTION + timedelta(minutes=1)
        async with sessions() as session, session.begin():
            assert await shred_stale_card_numbers(session, a_day_later, limit=None) == 2
        assert await db.fetchval(
            "SELECT count(*) FROM card_token WHERE pan_ciphertext IS NULL "
            "AND pan_deleted_at IS NOT NULL"
        ) == len(CARDS)

        # The epoch's key, then destroyed on time (a worker's periodic destruction).
        epochs = settings.vault_epoch_keys()
        used = epochs.held()
        kept_aside = [epochs.path(epoch).read_bytes() for epoch in used]
        assert kept_aside
        later = used[-1] + epochs.keep_after_end.total_seconds()
        destroyer = EpochKeys(
            epochs.directory,
            epoch_seconds=epochs.epoch_seconds,
            keep_after_end=epochs.keep_after_end,
            clock=lambda: later,
        )
        assert destroyer.destroy_expired() == used
        assert epochs.held() == []
        destroyer.current()  # a later epoch's key, still held when the attacker comes

        # The attacker: every key still held, every byte on disk.
        ring = settings.resolved_key_ring()
        still_held = [p.read_bytes() for p in sorted(epochs.directory.glob("*.key"))]
        assert len(still_held) == 1 and still_held[0] not in kept_aside
        heap, wal = await _disk(db)
        for where in (heap, wal):
            assert _recover(where, ring, still_held, token_ids) == set()
            # Control: with the destroyed key, the same scan finds every one of them there.
            assert _recover(where, ring, still_held + kept_aside, token_ids) == set(CARDS)
    finally:
        await engine.dispose()
        await db.close()


async def test_a_charge_whose_epoch_key_is_destroyed_sends_nothing(
    tmp_path: Path, scratch_url: str, temporal_env: WorkflowEnvironment
) -> None:
    """Its card number still in its column, its epoch key gone: the adapter answers exactly as
    for a card number deleted from the column (final, and nothing was sent)."""
    settings = _settings(tmp_path, scratch_url, temporal_env)
    db = await asyncpg.connect(scratch_url)
    engine = create_engine(settings.effective_database_url, pool_size=1)
    sent: list[httpx.Request] = []

    def network(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503, json={"error": "network_unavailable"})

    try:
        async with _merchant(settings) as merchant:
            await _charge_without_outcome(merchant, CARD_4242["number"])
            intent_id = await db.fetchval("SELECT id FROM payment_intent")
        token_id = await db.fetchval("SELECT id FROM card_token WHERE pan_ciphertext IS NOT NULL")
        txn_id = f"txn_{uuid.uuid4().hex}"
        await db.execute(  # the attempt the workflow records before it authorizes
            "INSERT INTO transaction (id, merchant_id, payment_intent_id, type, "
            "amount_in_cents, currency, status, network_reference, card_token_id) "
            "VALUES ($1, $2, $3, 'charge', 2499, 'usd', 'pending', $1, $4)",
            txn_id,
            merchant.id,
            intent_id,
            token_id,
        )
        epochs = settings.vault_epoch_keys()
        async with httpx.AsyncClient(transport=httpx.MockTransport(network)) as http:
            adapter = CardNetworkActivities(
                http=http,
                sessions=session_factory(engine),
                vault=VaultCipher(settings.resolved_key_ring(), epochs),
                base_url="http://network",
                timeout_seconds=1,
            )
            authorize = AuthorizeInput(txn_id, token_id, 2499, "usd", True)
            with pytest.raises(ApplicationError, match="network_unavailable"):
                await adapter.authorize_card(authorize)  # while its key is held: sent
            assert len(sent) == 1
            for epoch in epochs.held():  # lost or destroyed: the same to the adapter
                epochs.path(epoch).unlink()
            with pytest.raises(ApplicationError) as refused:
                await adapter.authorize_card(authorize)
        assert (refused.value.type, refused.value.non_retryable) == (
            ErrorType.VAULT_TOKEN_MISSING,
            True,
        )
        assert refused.value.message == "the charge's card number was deleted: nothing was sent"
        assert len(sent) == 1
    finally:
        await engine.dispose()
        await db.close()


async def test_rotation_clears_a_card_number_whose_epoch_key_is_gone(
    tmp_path: Path,
    scratch_url: str,
    temporal_env: WorkflowEnvironment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`durapay keys rotate` keeps each card number in its epoch; one whose epoch key is gone
    cannot be re-encrypted, and is deleted instead of failing the rotation for ever."""
    before = _settings(tmp_path, scratch_url, temporal_env)
    db = await asyncpg.connect(scratch_url)
    try:
        async with _merchant(before) as merchant:
            for number in CARDS[:2]:
                await _charge_without_outcome(merchant, number)
        tokens = [r["id"] for r in await db.fetch("SELECT id FROM card_token ORDER BY id")]
        lost = bytes(
            await db.fetchval("SELECT pan_ciphertext FROM card_token WHERE id = $1", tokens[0])
        )
        epochs = before.vault_epoch_keys()
        # The second card number in the next epoch, as if charged an hour later.
        next_hour = EpochKeys(
            epochs.directory,
            epoch_seconds=epochs.epoch_seconds,
            keep_after_end=epochs.keep_after_end,
            clock=lambda: epoch_of(lost) + 1,
        )
        await db.execute(
            "UPDATE card_token SET pan_ciphertext = $2 WHERE id = $1",
            tokens[1],
            VaultCipher(before.resolved_key_ring(), next_hour).encrypt(
                CARDS[1].encode(), context=tokens[1]
            ),
        )
        epochs.path(epoch_of(lost)).unlink()  # lost, say
        old = before.resolved_key_ring().current.material
        after = before.model_copy(
            update={
                "master_key": encode_key(new_master_key()),
                "retired_master_keys": encode_key(old),
            }
        )
        assert await keys.rotate(after, reencrypt_only=True) == keys.EXIT_OK
        assert "1 deleted: their vault epoch key is destroyed" in capsys.readouterr().out
        rows = {
            r["id"]: r
            for r in await db.fetch("SELECT id, pan_ciphertext, pan_deleted_at FROM card_token")
        }
        assert rows[tokens[0]]["pan_ciphertext"] is None
        assert rows[tokens[0]]["pan_deleted_at"] is not None
        # The other one is under the new master key, still in its own epoch.
        moved = bytes(rows[tokens[1]]["pan_ciphertext"])
        assert moved[1:9] == after.resolved_key_ring().current.id_bytes
        assert epoch_of(moved) == next_hour.current_epoch() == epoch_of(lost) + 3600
        vault = VaultCipher(after.resolved_key_ring(), next_hour)
        assert vault.decrypt(moved, context=tokens[1]).decode() == CARDS[1]
    finally:
        await db.close()
