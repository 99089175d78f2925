"""The key ring and encryption at rest: every ciphertext names its master key, each purpose has
its own subkey, retired keys still decrypt, ciphertexts from before key ids are still read, and
a ring read from the local stack's files follows a rotation made by another process."""

from __future__ import annotations

import base64
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from core.codec import PayloadEncryptionCodec
from core.crypto import Cipher, UnknownMasterKey
from core.keyring import (
    RECHECK_SECONDS,
    InvalidMasterKey,
    KeyFiles,
    KeyRing,
    MasterKey,
    Purpose,
    encode_key,
    new_master_key,
)
from core.settings import Settings

OLD, NEW = os.urandom(32), os.urandom(32)
PAN = b"4242424242424242"


def _legacy(key: bytes, plaintext: bytes, context: str, nonce: bytes | None = None) -> bytes:
    """A ciphertext as written before key ids: nonce | AES-GCM under the master key itself."""
    nonce = nonce or os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode())


def test_key_ids_name_a_key_without_revealing_it() -> None:
    key = MasterKey(OLD)
    assert key.key_id == MasterKey(OLD).key_id != MasterKey(NEW).key_id
    assert len(key.key_id) == 16 and bytes.fromhex(key.key_id) == key.id_bytes
    assert key.id_bytes not in OLD and OLD.hex() not in repr(key)


def test_a_ciphertext_carries_its_format_version_and_master_key_id() -> None:
    keys = KeyRing(NEW, [OLD])
    blob = Cipher(keys, Purpose.VAULT).encrypt(PAN, context="card_1")
    assert blob[0] == 1 and blob[1:9] == keys.current.id_bytes
    assert PAN not in blob
    assert Cipher(keys, Purpose.VAULT).decrypt(blob, context="card_1") == PAN


def test_a_ciphertext_is_bound_to_its_row_and_to_its_purpose() -> None:
    keys = KeyRing(NEW)
    vault = Cipher(keys, Purpose.VAULT)
    blob = vault.encrypt(PAN, context="card_1")
    with pytest.raises(InvalidTag):
        vault.decrypt(blob, context="card_2")
    # Same key ring, same row context: a vault ciphertext never decrypts as another purpose's.
    for purpose in (Purpose.WEBHOOK_SECRETS, Purpose.MERCHANT_SECRETS):
        with pytest.raises(InvalidTag):
            Cipher(keys, purpose).decrypt(blob, context="card_1")
    # Nor under the master key itself, as a ciphertext from before key ids would be.
    with pytest.raises(InvalidTag):
        AESGCM(NEW).decrypt(blob[9:21], blob[21:], blob[:9] + b"card_1")


def test_retired_keys_decrypt_and_the_current_key_encrypts() -> None:
    before = Cipher(KeyRing(OLD), Purpose.WEBHOOK_SECRETS).encrypt(b"whsec_x", context="we_1")
    rotated = Cipher(KeyRing(NEW, [OLD]), Purpose.WEBHOOK_SECRETS)
    assert rotated.decrypt(before, context="we_1") == b"whsec_x"
    assert not rotated.is_current(before)
    after = rotated.reencrypted(before, context="we_1")
    assert after is not None and rotated.is_current(after)
    assert after[1:9] == MasterKey(NEW).id_bytes
    assert rotated.reencrypted(after, context="we_1") is None  # already current: untouched
    # Once the old key is gone, what still needs it says which key that is.
    with pytest.raises(UnknownMasterKey, match=MasterKey(OLD).key_id):
        Cipher(KeyRing(NEW), Purpose.WEBHOOK_SECRETS).decrypt(before, context="we_1")


def test_ciphertexts_from_before_key_ids_are_read_under_any_key_of_the_ring() -> None:
    legacy = _legacy(OLD, PAN, "card_1")
    for keys in (KeyRing(OLD), KeyRing(NEW, [OLD])):
        vault = Cipher(keys, Purpose.VAULT)
        assert vault.decrypt(legacy, context="card_1") == PAN
        assert not vault.is_current(legacy)
        rewritten = vault.reencrypted(legacy, context="card_1")
        assert rewritten is not None and vault.is_current(rewritten)
        assert vault.decrypt(rewritten, context="card_1") == PAN
    with pytest.raises(InvalidTag):
        Cipher(KeyRing(NEW), Purpose.VAULT).decrypt(legacy, context="card_1")
    with pytest.raises(InvalidTag):
        Cipher(KeyRing(OLD), Purpose.VAULT).decrypt(legacy, context="card_2")


def test_a_legacy_ciphertext_that_looks_like_a_header_is_still_read() -> None:
    # Its random nonce happens to start with the version byte and the current key's id.
    nonce = bytes([1]) + MasterKey(OLD).id_bytes + os.urandom(3)
    legacy = _legacy(OLD, PAN, "card_1", nonce)
    assert Cipher(KeyRing(OLD), Purpose.VAULT).decrypt(legacy, context="card_1") == PAN


def test_key_files_rotate_keeping_every_old_key_private(tmp_path: Path) -> None:
    files = KeyFiles(tmp_path)
    (tmp_path / "master.key").write_text(encode_key(OLD))
    (tmp_path / "master.key").chmod(0o600)
    retired, new = files.rotate(NEW)
    assert (retired.key_id, new.key_id) == (MasterKey(OLD).key_id, MasterKey(NEW).key_id)
    third = new_master_key()
    files.rotate(third)
    assert files.read() == (third, [OLD, NEW])
    for name in ("master.key", "retired-master-keys"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert files.drop(MasterKey(OLD).key_id)
    assert not files.drop(MasterKey(OLD).key_id)
    assert files.read() == (third, [NEW])


def _local_settings(home: Path) -> Settings:
    return Settings(home=home, master_key=None, retired_master_keys="")


def test_a_ring_read_from_files_follows_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    running = _local_settings(tmp_path)  # a process started before the rotation
    vault = Cipher(running.resolved_key_ring(), Purpose.VAULT)
    before = vault.encrypt(PAN, context="card_1")
    old_id = running.resolved_key_ring().current.key_id

    rotating = _local_settings(tmp_path)  # `durapay keys rotate`, in another process
    rotating.key_files().rotate(NEW)
    rewritten = Cipher(rotating.resolved_key_ring(), Purpose.VAULT).reencrypted(
        before, context="card_1"
    )
    assert rewritten is not None

    # The running process meets a key id it does not know: it reads the files again.
    assert vault.decrypt(rewritten, context="card_1") == PAN
    keys = running.resolved_key_ring()
    assert keys.current.key_id == MasterKey(NEW).key_id
    assert [k.key_id for k in keys.retired] == [old_id]
    assert vault.decrypt(before, context="card_1") == PAN
    assert vault.is_current(vault.encrypt(PAN, context="card_2"))


def test_a_running_process_writes_under_the_new_key_once_the_files_change(tmp_path: Path) -> None:
    running = _local_settings(tmp_path)
    secrets = Cipher(running.resolved_key_ring(), Purpose.MERCHANT_SECRETS)
    secrets.encrypt(b"sk_test_1", context="pk_test_1")
    running.key_files().rotate(NEW)
    blob = secrets.encrypt(b"sk_test_2", context="pk_test_2")
    assert blob[1:9] == MasterKey(NEW).id_bytes


def test_unreadable_key_files_keep_the_keys_already_loaded(tmp_path: Path) -> None:
    running = _local_settings(tmp_path)
    vault = Cipher(running.resolved_key_ring(), Purpose.VAULT)
    blob = vault.encrypt(PAN, context="card_1")
    (tmp_path / "master.key").write_text("not a key")
    assert not running.resolved_key_ring().refresh()
    assert vault.decrypt(blob, context="card_1") == PAN
    assert vault.is_current(vault.encrypt(PAN, context="card_2"))


def test_retired_keys_come_from_the_setting_and_errors_never_quote_them(tmp_path: Path) -> None:
    configured = Settings(
        home=tmp_path, master_key=encode_key(NEW), retired_master_keys=f" {encode_key(OLD)} ,\n"
    )
    keys = configured.resolved_key_ring()
    assert [k.key_id for k in keys.keys] == [MasterKey(NEW).key_id, MasterKey(OLD).key_id]
    assert not (tmp_path / "retired-master-keys").exists()  # the operator holds the keys
    short = base64.b64encode(b"s3cr3t-but-short").decode()
    broken = Settings(
        home=tmp_path, master_key=encode_key(NEW), retired_master_keys=f"{encode_key(OLD)},{short}"
    )
    with pytest.raises(InvalidMasterKey, match="DURAPAY_RETIRED_MASTER_KEYS") as refused:
        broken.resolved_key_ring()
    assert short not in str(refused.value) and "key 2 of 2" in str(refused.value)


def test_configured_keys_are_fixed_for_the_process(tmp_path: Path) -> None:
    configured = Settings(home=tmp_path, master_key=encode_key(NEW))
    keys = configured.resolved_key_ring()
    assert not keys.refresh()
    assert keys.find(os.urandom(8)) is None


async def test_the_payload_codec_follows_its_ring_across_a_rotation(tmp_path: Path) -> None:
    running = _local_settings(tmp_path)
    old_codec = PayloadEncryptionCodec.from_key_ring(running.resolved_key_ring())
    [before] = await old_codec.encode([Payload(data=b"before")])
    _local_settings(tmp_path).key_files().rotate(NEW)
    # A process started after the rotation writes under the new key; the running one reads it.
    new_codec = PayloadEncryptionCodec.from_key_ring(_local_settings(tmp_path).resolved_key_ring())
    [after] = await new_codec.encode([Payload(data=b"after")])
    assert await old_codec.decode([after]) == [Payload(data=b"after")]
    assert await new_codec.decode([before]) == [Payload(data=b"before")]
    # And from then on the running one writes under the new key too.
    assert old_codec.key_id == new_codec.key_id == PayloadEncryptionCodec(NEW).key_id


def test_a_running_ring_stops_decrypting_with_a_dropped_key_within_the_bound(
    tmp_path: Path,
) -> None:
    """`durapay keys drop` rewrites the files while processes run: a ring that holds the key
    (it knows its id, so meeting it never reloads) re-checks the files within the bound."""
    now = [0.0]
    (tmp_path / "master.key").write_text(encode_key(OLD))
    (tmp_path / "master.key").chmod(0o600)
    files = KeyFiles(tmp_path)
    files.rotate(NEW)
    running = KeyRing.from_source(KeyFiles(tmp_path), clock=lambda: now[0])
    secrets = Cipher(running, Purpose.MERCHANT_SECRETS)
    under_old = Cipher(KeyRing(OLD), Purpose.MERCHANT_SECRETS).encrypt(b"sk_1", context="pk_1")
    assert secrets.decrypt(under_old, context="pk_1") == b"sk_1"
    generation = running.generation

    assert files.drop(MasterKey(OLD).key_id)
    now[0] += RECHECK_SECONDS
    with pytest.raises(UnknownMasterKey, match=MasterKey(OLD).key_id):
        secrets.decrypt(under_old, context="pk_1")
    assert [k.key_id for k in running.keys] == [MasterKey(NEW).key_id]
    # Holders of derived keys (the payload codec) see the ring change by its generation.
    assert running.generation == generation + 1
    assert not running.maybe_refresh()  # nothing changed since: no reload


@pytest.mark.processes
def test_a_dropped_key_stops_decrypting_in_a_process_that_runs_on(tmp_path: Path) -> None:
    """The same on the real clock, through the settings every process uses."""
    running = _local_settings(tmp_path)
    vault = Cipher(running.resolved_key_ring(), Purpose.VAULT)
    before = vault.encrypt(PAN, context="card_1")
    running.key_files().rotate(NEW)
    assert vault.decrypt(before, context="card_1") == PAN
    old_id = before[1:9].hex()
    dropped_at = time.monotonic()
    assert _local_settings(tmp_path).key_files().drop(old_id)  # `durapay keys drop`, elsewhere

    def refused() -> bool:
        try:
            vault.decrypt(before, context="card_1")
        except UnknownMasterKey:
            return True
        return False

    while not refused():
        assert time.monotonic() - dropped_at < RECHECK_SECONDS + 1, "still decrypts"
        time.sleep(0.01)
    assert vault.decrypt(vault.encrypt(PAN, context="card_2"), context="card_2") == PAN
