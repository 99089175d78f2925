"""The master key ring: the current master key, which encrypts everything new, and the retired
ones, kept only to decrypt what still needs them (rows not yet re-encrypted, Temporal histories
of runs still open).

Each master key is named by a short public id (HKDF of the key under its own label: it reveals
nothing of the key) that every ciphertext at rest carries, so decryption picks its key without
trying each one. No master key encrypts anything itself: each purpose (card vault, merchant
secret keys, webhook secrets, Temporal payloads) uses its own HKDF subkey, so a ciphertext of
one purpose never decrypts as another's.

Where the keys come from (see `Settings.resolved_key_ring`):
- configured (`DURAPAY_MASTER_KEY`, `DURAPAY_RETIRED_MASTER_KEYS`): fixed for the process's life;
  an operator rotates by restarting with new values.
- the local stack's files in `DURAPAY_HOME` (`master.key`, `retired-master-keys`, both 0600),
  which `durapay keys rotate` and `durapay keys drop` rewrite while the stack runs: a ring read
  from them reloads itself when it meets a key id it does not know and the files have changed
  (a rotation), and re-checks the files at most every `RECHECK_SECONDS` when it is asked for a
  key it does know (a drop), so running processes follow both without a restart.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.secret_files import (
    InsecurePermissionsError,
    ensure_private_dir,
    read_secret,
    write_secret,
)

log = logging.getLogger("durapay.keys")

MASTER_KEY_FILE = "master.key"
RETIRED_KEYS_FILE = "retired-master-keys"
# Held while the key files are rewritten, so two rotations cannot each retire the same key and
# lose the other's new one.
KEYS_LOCK_FILE = "keys.lock"
KEY_BYTES = 32
KEY_ID_BYTES = 8
# How stale a ring read from files may be about a key that was dropped: a known key id costs
# at most one stat of the key files per this interval (an unknown one re-checks at once).
RECHECK_SECONDS = 1.0


class Purpose(StrEnum):
    """What a subkey encrypts; its value is the HKDF label, so never change one."""

    VAULT = "card vault"
    MERCHANT_SECRETS = "merchant secret keys"
    WEBHOOK_SECRETS = "webhook secrets"


class InvalidMasterKey(ValueError):
    """A configured or stored master key that is not 32 bytes of base64 (never quoted)."""


class MasterKey:
    """One 32-byte master key, its public id, and the subkeys derived from it."""

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise InvalidMasterKey(f"a master key is {KEY_BYTES} bytes")
        self._material = material
        self.id_bytes = derive_key(material, b"durapay master key id v1", KEY_ID_BYTES)
        self.key_id = self.id_bytes.hex()
        self._aeads: dict[Purpose, AESGCM] = {}

    @property
    def material(self) -> bytes:
        """The key itself, only for deriving a subkey under another label (the payload codec)."""
        return self._material

    def aead(self, purpose: Purpose) -> AESGCM:
        aead = self._aeads.get(purpose)
        if aead is None:
            aead = self._aeads[purpose] = AESGCM(self.subkey(purpose))
        return aead

    def subkey(self, purpose: Purpose) -> bytes:
        """The purpose's subkey itself, for what combines it with another key (the card
        vault's epoch keys, core/crypto.py `VaultCipher`)."""
        return derive_key(
            self._material, b"durapay at rest v1: " + purpose.value.encode(), KEY_BYTES
        )

    @cached_property
    def fingerprint_key(self) -> bytes:
        """HMAC key of idempotency fingerprints (api/idempotency.py): its own subkey, so a
        fingerprint never doubles as anything encrypted under another purpose's key."""
        return derive_key(self._material, b"durapay idempotency fingerprints v1", KEY_BYTES)

    @cached_property
    def legacy_aead(self) -> AESGCM:
        """The master key used raw, as ciphertexts written before key ids were (read only)."""
        return AESGCM(self._material)

    def __repr__(self) -> str:  # never the material
        return f"MasterKey({self.key_id})"


class KeySource(Protocol):
    """Where a ring can read its keys again (the local stack's files)."""

    def signature(self) -> object:
        """Changes whenever what `read` returns may have changed (cheap: a stat)."""

    def read(self) -> tuple[bytes, list[bytes]]:
        """The current master key and the retired ones."""


class KeyRing:
    """The current master key and the retired ones, by id."""

    def __init__(
        self,
        current: bytes,
        retired: Sequence[bytes] = (),
        *,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source: KeySource | None = None
        self._signature: object = None
        self._lock = threading.Lock()
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._next_check = float("-inf")
        # Bumped by every reload, so holders of derived keys (the codec) know to rebuild.
        self.generation = 0
        self._install(current, retired)

    @classmethod
    def from_source(
        cls,
        source: KeySource,
        *,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> KeyRing:
        """A ring read from `source` that reloads when it changes."""
        # The signature is taken before reading: a change in between is seen next time.
        signature = source.signature()
        ring = cls(*source.read(), recheck_seconds=recheck_seconds, clock=clock)
        ring._source, ring._signature = source, signature
        ring._next_check = clock() + recheck_seconds
        return ring

    def _install(self, current: bytes, retired: Sequence[bytes]) -> None:
        previous: dict[str, MasterKey] = getattr(self, "_by_hex", {})

        def known(material: bytes) -> MasterKey:  # keeps the subkeys a reload would rederive
            key = MasterKey(material)
            return previous.get(key.key_id, key)

        current_key = known(current)
        by_hex = {current_key.key_id: current_key}
        for material in retired:
            key = known(material)
            by_hex.setdefault(key.key_id, key)
        # Assigned whole, so a reader on another thread sees the old ring or the new one.
        self._by_hex = by_hex
        self._by_id = {k.id_bytes: k for k in by_hex.values()}
        self._current = current_key
        self._retired = tuple(k for k in by_hex.values() if k is not current_key)

    @property
    def current(self) -> MasterKey:
        return self._current

    @property
    def retired(self) -> tuple[MasterKey, ...]:
        return self._retired

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, the current one first."""
        return (self._current, *self._retired)

    def find(self, key_id: bytes) -> MasterKey | None:
        """The key with this id; a ring read from files reloads them first if the id is
        unknown and they changed (a rotation by another process), and, for a known id, if
        they changed since they were last checked over `RECHECK_SECONDS` ago: a key dropped by
        `durapay keys drop` meanwhile is not found, so nothing decrypts under it any more."""
        self.maybe_refresh()
        key = self._by_id.get(key_id)
        if key is None and self.refresh():
            key = self._by_id.get(key_id)
        return key

    def find_hex(self, key_id: str) -> MasterKey | None:
        return self._by_hex.get(key_id)

    def maybe_refresh(self) -> bool:
        """`refresh()`, if the source was last checked `RECHECK_SECONDS` ago or more: cheap
        enough for every decryption (a clock read; a stat of the key files now and then).
        Holders of keys derived from the ring (the payload codec) call it before comparing
        `generation`, so they too stop using a dropped key within that bound."""
        if self._source is None or self._clock() < self._next_check:
            return False
        return self.refresh()

    def refresh(self) -> bool:
        """Reload from the source if it changed since the last read; True if reloaded."""
        if self._source is None:
            return False
        with self._lock:
            self._next_check = self._clock() + self._recheck_seconds
            signature = self._source.signature()
            if signature == self._signature:
                return False
            self._signature = signature  # a bad file is reported once, not on every call
            try:
                current, retired = self._source.read()
                self._install(current, retired)
            except (OSError, ValueError, InsecurePermissionsError) as error:
                # Keep the keys we have: they still decrypt everything they did before.
                log.error(
                    "key files changed but cannot be read, keeping the keys loaded before: %s",
                    error,
                )
                return False
            self.generation += 1
            return True


def decode_key(encoded: str, *, where: str) -> bytes:
    """A base64 master key; errors name where it came from, never the value."""
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        raise InvalidMasterKey(f"{where} is not base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidMasterKey(f"{where} must be {KEY_BYTES} bytes, base64-encoded")
    return key


def decode_keys(text: str, *, where: str) -> list[bytes]:
    """Keys separated by commas or new lines (empty entries ignored)."""
    entries = [e for e in text.replace("\n", ",").split(",") if e.strip()]
    return [
        decode_key(e, where=f"{where} (key {n} of {len(entries)})")
        for n, e in enumerate(entries, 1)
    ]


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def new_master_key() -> bytes:
    return os.urandom(KEY_BYTES)


class KeyFiles:
    """The local stack's ring on disk: `master.key` (current) and `retired-master-keys` (one
    base64 key per line), both 0600 in the private state dir.

    A rotation writes the retired file first (with the old current key added) and `master.key`
    second, each replaced whole; readers read `master.key` first. So a reader racing a rotation
    sees the old current key, or the new one with the old one already retired: never a ring
    without the old key.
    """

    def __init__(self, home: Path, *, configured_retired: Sequence[bytes] = ()) -> None:
        self.master_path = home / MASTER_KEY_FILE
        self.retired_path = home / RETIRED_KEYS_FILE
        self._lock_path = home / KEYS_LOCK_FILE
        self._configured_retired = list(configured_retired)

    def signature(self) -> object:
        return tuple(_stat_signature(p) for p in (self.master_path, self.retired_path))

    def read(self) -> tuple[bytes, list[bytes]]:
        encoded = read_secret(self.master_path)
        if encoded is None:
            raise FileNotFoundError(f"no master key at {self.master_path}")
        current = decode_key(encoded, where=str(self.master_path))
        return current, [*self._configured_retired, *self.read_retired()]

    def read_retired(self) -> list[bytes]:
        return decode_keys(read_secret(self.retired_path) or "", where=str(self.retired_path))

    def rotate(self, new_key: bytes) -> tuple[MasterKey, MasterKey]:
        """Make `new_key` current and retire the current one; (retired, new)."""
        with self._locked():
            current, _ = self.read()
            retired = self.read_retired()
            if current not in retired:
                self._write_retired([*retired, current])
            write_secret(self.master_path, encode_key(new_key))
        return MasterKey(current), MasterKey(new_key)

    def drop(self, key_id: str) -> bool:
        """Forget a retired key; False if no retired key in the file has this id."""
        with self._locked():
            retired = self.read_retired()
            kept = [k for k in retired if MasterKey(k).key_id != key_id]
            if len(kept) == len(retired):
                return False
            self._write_retired(kept)
        return True

    def _write_retired(self, keys: list[bytes]) -> None:
        write_secret(self.retired_path, "".join(encode_key(k) + "\n" for k in keys))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self._lock_path.parent)
        fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _stat_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def derive_key(material: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """A subkey of `material` (HKDF-SHA256, no salt) under its own label `info`: every key
    Durapay uses is one of these, never a master key itself."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)
