"""Vault epoch keys: what makes deleting a card number final.

Setting a card number's column to NULL does not remove its ciphertext from the database's
files: the old row version stays in the table's heap until a vacuum reuses the space, and the
write-ahead log (and every backup or replica of it) keeps the row as written. Whoever holds
the master key could read those copies back. So every card number is also encrypted under an
epoch key (core/crypto.py `VaultCipher`): a random 32-byte key per epoch (one hour by default),
not derived from anything, kept only in a key directory outside the database, and destroyed
(its file unlinked) once no card number of its epoch may still be needed: the retention of a
card number (`CARD_NUMBER_RETENTION`) after the epoch's end, plus a margin. From then on every
copy of those ciphertexts, wherever it lies, is undecryptable by anyone, with every key that
is still held.

Every process that encrypts or decrypts card numbers (the API, every worker) reads the same
directory: on several hosts or containers it must be one shared volume. A lost directory is
a deleted vault: every card number not charged yet is gone.

Files are `epoch-<end, UTC>.key`, 0600 in a 0700 directory. A key is created by writing a
private temporary file (O_EXCL) and hard-linking it to its name: the link fails if the name
exists, so processes racing to create an epoch's key agree on the first one, and nobody ever
reads a half-written key. Destruction renames the file away (so no reader opens it again),
overwrites it with zeros and unlinks it; the overwrite is best effort only (journaling and
copy-on-write filesystems and SSDs may keep the old blocks): what the design relies on is that
the file is gone from the directory, its backups and its snapshots, which the operator
controls (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.secret_files import InsecurePermissionsError, check_private_dir, ensure_private_dir

log = logging.getLogger("durapay.vault")

# Only an authorization reads a card number; past this age every retry of one is long over,
# and the card number is deleted (core/db/vault.py).
CARD_NUMBER_RETENTION = timedelta(days=1)
EPOCH_KEY_BYTES = 32
# How often each worker (and each API process) destroys the epoch keys past their time.
DESTROY_INTERVAL_SECONDS = 300.0
_NAME_FORMAT = "%Y%m%dT%H%M%SZ"
_KEY_FILE = re.compile(r"epoch-(\d{8}T\d{6}Z)\.key")
_CREATING, _DESTROYING = ".creating-", ".destroying-"
# A temporary file older than this belongs to a process that died while creating a key.
_ABANDONED_SECONDS = 600.0


class CardNumberDeleted(LookupError):
    """The key of a card number's epoch is gone (destroyed, or never in this directory), so
    the card number is gone too: it can never be decrypted again."""


def epoch_name(epoch: int) -> str:
    """An epoch's public name: when it ends, in UTC (`20261130T140000Z`)."""
    return datetime.fromtimestamp(epoch, UTC).strftime(_NAME_FORMAT)


class EpochKeys:
    """The key directory: the current epoch's key (created on first use), the keys of earlier
    epochs until their destruction time, and their destruction.

    An epoch is named by when it ends (unix seconds, a multiple of `epoch_seconds`), and its
    key is kept until `keep_after_end` past that end. Past that time a key is never returned,
    whether or not its file was destroyed yet: a clock-skewed or late destroyer cannot extend
    a card number's life. Keys read are cached with their file's identity, which is checked
    again (a stat) on every use, so a key destroyed by another process is not used from memory.
    """

    def __init__(
        self,
        directory: Path,
        *,
        epoch_seconds: int,
        keep_after_end: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if epoch_seconds < 1:
            raise ValueError("a vault epoch lasts at least one second")
        self.directory = directory
        self.epoch_seconds = epoch_seconds
        self.keep_after_end = keep_after_end
        self._clock = clock
        self._cache: dict[int, tuple[tuple[int, int], bytes]] = {}
        self._missing_reported: set[int] = set()
        self._lock = threading.Lock()

    def path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch_name(epoch)}.key"

    def current_epoch(self) -> int:
        """The epoch new card numbers go into now (its end)."""
        return (int(self._clock()) // self.epoch_seconds + 1) * self.epoch_seconds

    def destroy_at(self, epoch: int) -> float:
        return epoch + self.keep_after_end.total_seconds()

    def current(self) -> tuple[int, bytes]:
        """The current epoch and its key, created if this is the epoch's first card number."""
        epoch = self.current_epoch()
        key = self._find(epoch, report_missing=False)  # missing: it is ours to create
        if key is None:
            key = self._create(epoch)
        return epoch, key

    def find(self, epoch: int) -> bytes | None:
        """The epoch's key, or None once it is destroyed or past its destruction time."""
        return self._find(epoch, report_missing=True)

    def _find(self, epoch: int, *, report_missing: bool) -> bytes | None:
        if self._clock() >= self.destroy_at(epoch):
            self._forget(epoch)
            return None
        path = self.path(epoch)
        try:
            info = path.stat()
        except FileNotFoundError:
            self._forget(epoch)
            if report_missing:
                self._report_missing(epoch)
            return None
        identity = (info.st_ino, info.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(epoch)
        if cached is not None and cached[0] == identity:
            return cached[1]
        key = self._read(path)
        if key is not None:
            with self._lock:
                self._cache[epoch] = (identity, key)
                self._prune()
        return key

    def held(self) -> list[int]:
        """The epochs whose key files are in the directory (destroyed or not yet due)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(_epoch_of(name) for name in names if _KEY_FILE.fullmatch(name))

    def destroy_expired(self) -> list[int]:
        """Destroy every key past its destruction time (and what a crashed process left
        behind); the epochs this call destroyed. Idempotent, and safe while other processes
        do the same: each file is destroyed by whoever renames it first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        now = self._clock()
        destroyed = []
        for name in names:
            path = self.directory / name
            if _KEY_FILE.fullmatch(name):
                epoch = _epoch_of(name)
                if now >= self.destroy_at(epoch) and self._destroy(path):
                    destroyed.append(epoch)
                    self._forget(epoch)
            elif name.startswith(_DESTROYING) or (
                name.startswith(_CREATING) and _older_than(path, _ABANDONED_SECONDS)
            ):
                _wipe(path)
        if destroyed:
            _sync_dir(self.directory)
            log.info(
                "vault epoch keys destroyed: %s",
                ", ".join(epoch_name(e) for e in sorted(destroyed)),
            )
        return sorted(destroyed)

    def _create(self, epoch: int) -> bytes:
        ensure_private_dir(self.directory)
        path = self.path(epoch)
        partial = self.directory / f"{_CREATING}{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        linked = False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(EPOCH_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())  # it must outlive a crash once a card uses it
            try:
                os.link(partial, path)
                linked = True
            except FileExistsError:
                pass  # another process created this epoch's key first: use that one
        finally:
            if linked:
                partial.unlink()  # the same file as the key now: only its temporary name goes
            else:
                _wipe(partial)  # a key nobody will use
        _sync_dir(self.directory)
        key = self.find(epoch)
        if key is None:
            raise CardNumberDeleted(
                f"vault epoch key {epoch_name(epoch)} vanished as it was "
                f"created in {self.directory}"
            )
        return key

    def _read(self, path: Path) -> bytes | None:
        try:
            check_private_dir(path.parent)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
                raise InsecurePermissionsError(
                    f"refusing to use {path}: other users can read it. Fix: chmod 600 {path}"
                )
            key = handle.read(EPOCH_KEY_BYTES + 1)
        if key == bytes(EPOCH_KEY_BYTES):
            return None  # read while being destroyed (overwritten before it is unlinked)
        if len(key) != EPOCH_KEY_BYTES:
            raise ValueError(f"{path} is not a vault epoch key ({EPOCH_KEY_BYTES} bytes)")
        return key

    def _destroy(self, path: Path) -> bool:
        doomed = path.with_name(f"{_DESTROYING}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return False  # another process is destroying it
        _wipe(doomed)
        return True

    def _forget(self, epoch: int) -> None:
        with self._lock:
            self._cache.pop(epoch, None)

    def _prune(self) -> None:
        now = self._clock()
        for epoch in [e for e in self._cache if now >= self.destroy_at(e)]:
            del self._cache[epoch]

    def _report_missing(self, epoch: int) -> None:
        """A key missing before its time: destroyed early by hand, a lost directory, or a
        process that does not share the API's directory. Said once per epoch per process."""
        if epoch in self._missing_reported:
            return
        self._missing_reported.add(epoch)
        log.warning(
            "vault epoch key %s is missing from %s before its destruction time: its "
            "card numbers are unreadable. Is DURAPAY_VAULT_KEY_DIR one directory "
            "shared by the API and every worker?",
            epoch_name(epoch),
            self.directory,
        )


async def destroy_expired_periodically(
    keys: EpochKeys, *, every: float = DESTROY_INTERVAL_SECONDS
) -> None:
    """Destroy the keys past their time now and every `every` seconds, until cancelled."""
    while True:
        try:
            await asyncio.to_thread(keys.destroy_expired)
        except (OSError, ValueError, InsecurePermissionsError) as error:
            log.error("could not destroy expired vault epoch keys in %s: %s", keys.directory, error)
        await asyncio.sleep(every)


def _epoch_of(name: str) -> int:
    match = _KEY_FILE.fullmatch(name)
    assert match is not None
    return int(datetime.strptime(match[1], _NAME_FORMAT).replace(tzinfo=UTC).timestamp())


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _wipe(path: Path) -> None:
    """Overwrite (best effort, see the module's docstring) and unlink; gone already is fine."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
