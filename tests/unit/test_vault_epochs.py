"""The card vault's epoch keys: one key per epoch whoever creates it first, private files,
destroyed a day plus a margin after their epoch ends (by any number of processes, once), and a
card number whose epoch key is gone reads as deleted, cached or not."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from core.crypto import Cipher, VaultCipher, epoch_of
from core.keyring import KeyRing, MasterKey, Purpose
from core.secret_files import InsecurePermissionsError
from core.settings import Settings
from core.vault_epochs import (
    CARD_NUMBER_RETENTION,
    CardNumberDeleted,
    EpochKeys,
    destroy_expired_periodically,
    epoch_name,
)

HOUR = 3600
KEEP = CARD_NUMBER_RETENTION + timedelta(hours=1)
T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC
PAN = b"4242424242424242"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _store(directory: Path, clock: Clock | None = None) -> EpochKeys:
    return EpochKeys(directory, epoch_seconds=HOUR, keep_after_end=KEEP, clock=clock or Clock())


def _create_in_process(directory: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # every process asks at once
    results.put(_store(Path(directory)).current())


def test_processes_racing_to_create_an_epoch_key_agree_on_one(tmp_path: Path) -> None:
    directory = tmp_path / "vault-epochs"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_create_in_process, args=(str(directory), barrier, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    answers = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(set(answers)) == 1
    epoch, key = answers[0]
    assert _store(directory).find(epoch) == key
    assert os.listdir(directory) == [f"epoch-{epoch_name(epoch)}.key"]  # no temporary left


def test_threads_racing_to_create_an_epoch_key_agree_on_one(tmp_path: Path) -> None:
    barrier, keys = threading.Barrier(8), []

    def create() -> None:
        barrier.wait()
        keys.append(_store(tmp_path).current()[1])  # a store each: no shared cache

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_epoch_keys_are_private_random_files_named_by_their_epochs_end(tmp_path: Path) -> None:
    directory = tmp_path / "vault-epochs"
    store = _store(directory)
    epoch, key = store.current()
    assert epoch == (int(T0) // HOUR + 1) * HOUR and epoch - HOUR <= T0 < epoch
    path = store.path(epoch)
    assert path.name == f"epoch-{epoch_name(epoch)}.key" == "epoch-20261130T010000Z.key"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key and len(key) == 32
    assert store.current() == (epoch, key)  # the epoch's key, not a new one
    # The next epoch has a key of its own.
    later = _store(directory, Clock(T0 + HOUR))
    assert later.current()[1] != key and later.held() == [epoch, epoch + HOUR]


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    epoch, _ = store.current()
    store.path(epoch).chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match="chmod 600"):
        _store(tmp_path).find(epoch)


def test_a_key_is_destroyed_a_day_and_the_margin_after_its_epoch_ends(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    epoch, key = store.current()
    destroy_at = epoch + KEEP.total_seconds()
    clock.now = destroy_at - 1  # the last second a card number of it may still be needed
    assert store.destroy_expired() == []
    assert store.find(epoch) == key
    clock.now = destroy_at
    # Past its time it is never used, even before a destroyer has come by.
    assert store.find(epoch) is None and store.path(epoch).exists()
    assert store.destroy_expired() == [epoch]
    assert not store.path(epoch).exists() and os.listdir(tmp_path) == []
    assert store.destroy_expired() == []  # idempotent


def test_several_destroyers_destroy_each_key_once(tmp_path: Path) -> None:
    epochs = [_store(tmp_path, Clock(T0 + n * HOUR)).current()[0] for n in range(6)]
    late = Clock(epochs[-1] + KEEP.total_seconds())
    barrier, destroyed = threading.Barrier(4), []

    def destroy() -> None:
        barrier.wait()
        destroyed.extend(_store(tmp_path, late).destroy_expired())

    threads = [threading.Thread(target=destroy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(destroyed) == epochs
    assert os.listdir(tmp_path) == []


def test_a_card_number_whose_epoch_key_is_gone_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = KeyRing(os.urandom(32))
    running = VaultCipher(keys, _store(tmp_path))
    blob = running.encrypt(PAN, context="card_1")
    assert running.decrypt(blob, context="card_1") == PAN  # its key is cached now
    # Another process destroys it (here: by hand, as a lost directory would): the running
    # one does not decrypt from its cache.
    epoch = epoch_of(blob)
    late = _store(tmp_path, Clock(epoch + KEEP.total_seconds()))
    assert late.destroy_expired() == [epoch]
    with pytest.raises(CardNumberDeleted, match=epoch_name(epoch)):
        running.decrypt(blob, context="card_1")
    # Missing before its time (a directory not shared, or lost): deleted just the same.
    other = VaultCipher(keys, _store(tmp_path / "elsewhere"))
    with pytest.raises(CardNumberDeleted):
        other.decrypt(running.encrypt(PAN, context="card_2"), context="card_2")
    # Which the operator is told, by epoch name, never with any key material.
    warnings = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert warnings and all(
        "shared by the API and every worker" in w and epoch_name(epoch) in w for w in warnings
    )
    key = running.epochs.current()[1]
    assert key.hex() not in caplog.text and str(key) not in caplog.text


def test_a_card_number_needs_both_the_master_key_and_its_epoch_key(tmp_path: Path) -> None:
    master = os.urandom(32)
    vault = VaultCipher(KeyRing(master), _store(tmp_path / "a"))
    blob = vault.encrypt(PAN, context="card_1")
    assert blob[0] == 2 and blob[1:9] == MasterKey(master).id_bytes
    assert epoch_of(blob) == _store(tmp_path).current_epoch() and PAN not in blob
    with pytest.raises(InvalidTag):
        vault.decrypt(blob, context="card_2")  # bound to its token
    # The same master key with another directory's key for the same epoch: nothing.
    (tmp_path / "b").mkdir(mode=0o700)
    _store(tmp_path / "b").current()
    with pytest.raises(InvalidTag):
        VaultCipher(KeyRing(master), _store(tmp_path / "b")).decrypt(blob, context="card_1")
    # The epoch key under another master key: nothing either.
    with pytest.raises(Exception, match="master key"):
        VaultCipher(KeyRing(os.urandom(32)), _store(tmp_path / "a")).decrypt(blob, context="card_1")
    # Nor the master key's vault subkey alone, as a card number from before epochs.
    with pytest.raises(InvalidTag):
        Cipher(KeyRing(master), Purpose.VAULT).decrypt(blob, context="card_1")


def test_card_numbers_from_before_epochs_are_read_and_rotated_into_an_epoch(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = Cipher(KeyRing(old), Purpose.VAULT).encrypt(PAN, context="card_1")
    clock = Clock()
    rotated = VaultCipher(KeyRing(new, [old]), _store(tmp_path, clock))
    assert rotated.decrypt(before, context="card_1") == PAN
    moved = rotated.reencrypted(before, context="card_1")
    assert moved is not None and moved[0] == 2 and rotated.is_current(moved)
    assert epoch_of(moved) == rotated.epochs.current_epoch()
    # A card number under the old key stays in its own epoch when re-encrypted later on.
    in_epoch = VaultCipher(KeyRing(old), _store(tmp_path, clock)).encrypt(PAN, context="card_2")
    clock.now += 5 * HOUR
    again = rotated.reencrypted(in_epoch, context="card_2")
    assert again is not None and again[1:9] == MasterKey(new).id_bytes
    assert epoch_of(again) == epoch_of(in_epoch) != rotated.epochs.current_epoch()
    assert rotated.decrypt(again, context="card_2") == PAN
    assert rotated.reencrypted(again, context="card_2") is None
    clock.now = epoch_of(in_epoch) + KEEP.total_seconds()
    with pytest.raises(CardNumberDeleted):
        rotated.reencrypted(in_epoch, context="card_2")


def test_the_settings_name_the_directory_the_epoch_and_the_margin(tmp_path: Path) -> None:
    default = Settings(home=tmp_path / "home").vault_epoch_keys()
    assert default.directory == (tmp_path / "home" / "vault-epochs").resolve()
    assert default.epoch_seconds == 3600
    assert default.keep_after_end == timedelta(days=1, hours=1)
    configured = Settings(
        home=tmp_path / "home",
        vault_key_dir=tmp_path / "shared",
        vault_epoch_seconds=600,
        vault_epoch_key_margin_seconds=0,
    ).vault_epoch_keys()
    assert configured.directory == (tmp_path / "shared").resolve()
    assert (configured.epoch_seconds, configured.keep_after_end) == (600, timedelta(days=1))


async def test_destruction_runs_again_and_again_until_cancelled(tmp_path: Path) -> None:
    """As every worker and API process runs it: keys that come due later go too."""
    clock = Clock()
    store = _store(tmp_path, clock)
    first, _ = store.current()
    destroyer = asyncio.create_task(destroy_expired_periodically(store, every=0.01))
    try:
        clock.now = first + KEEP.total_seconds()
        second, _ = store.current()  # a later epoch's key, due a while after
        for due, gone in ((None, first), (second + KEEP.total_seconds(), second)):
            if due is not None:
                clock.now = due
            deadline = asyncio.get_running_loop().time() + 5
            while store.path(gone).exists():
                assert asyncio.get_running_loop().time() < deadline, "not destroyed"
                await asyncio.sleep(0.01)
            if due is None:
                assert store.path(second).exists()
    finally:
        destroyer.cancel()
    assert store.held() == []
