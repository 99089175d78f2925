"""`durapay keys`: the master key ring, and what at rest still needs each key.

    durapay keys status [--open-runs]     current and retired key ids, rows at rest under each
                                          (exit 2 while any row is not under the current key)
    durapay keys rotate                   local stack: new master key, the old one retired, then
                                          everything at rest re-encrypted under the new one
    durapay keys rotate --reencrypt-only  re-encrypt under the current key only (after setting a
                                          new DURAPAY_MASTER_KEY, or to finish a rotation)
    durapay keys drop KEY_ID [--force]    local stack: forget a retired key no longer needed

At rest are merchant secret keys, webhook secrets (the previous one of a rotation too) and the
card numbers still held; each ciphertext names its master key. Re-encryption goes in batches,
each in its own database transaction, and skips every row already under the current key, so a
second run, or a run after one that crashed midway, only does what is left. Card numbers held
longer than a day are deleted first (core/db/vault.py), not re-encrypted, and the vault epoch
keys past their time are destroyed (core/vault_epochs.py); a card number stays in its epoch
(one from before epochs goes into the current one), and one whose epoch key is gone is
deleted.

Temporal payloads are never re-encrypted (histories are immutable): a retired key stays in the
ring while a run still open holds payloads under it (`--open-runs` counts them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from sqlalchemy import func, update
from sqlmodel import SQLModel, select
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.converter import WorkflowSerializationContext
from temporalio.service import RPCError

from cli.shutdown import exit_without_finalizing
from core.codec import KEY_ID_METADATA, PayloadEncryptionCodec, PayloadKey, is_refusal
from core.crypto import (
    CardNumberDeleted,
    Cipher,
    UnknownMasterKey,
    VaultCipher,
    current_header,
    current_vault_header,
)
from core.db.session import create_engine, session_factory
from core.db.tables import CardToken, MerchantKey, WebhookEndpoint
from core.db.vault import shred_stale_card_numbers
from core.keyring import KeyRing, Purpose, new_master_key
from core.settings import Settings
from core.temporal_client import connect_temporal
from core.vault_epochs import EpochKeys, epoch_name

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PENDING = 2  # rows at rest still need a key other than the current one
BATCH_SIZE = 500
# Connecting to Temporal and re-encoding its schedules; an unreachable server fails the run.
TEMPORAL_TIMEOUT_SECONDS = 30
LEGACY = "legacy"  # ciphertexts from before key ids


@dataclass(frozen=True)
class AtRest:
    """One encrypted column: its rows are bound to (and found by) their id column."""

    label: str
    table: type[SQLModel]
    id_column: str
    ciphertext_column: str
    purpose: Purpose

    def ids(self) -> Any:
        return getattr(self.table, self.id_column)

    def ciphertexts(self) -> Any:
        return getattr(self.table, self.ciphertext_column)


AT_REST = (
    AtRest(
        "merchant secret keys",
        MerchantKey,
        "public_key",
        "secret_ciphertext",
        Purpose.MERCHANT_SECRETS,
    ),
    AtRest("webhook secrets", WebhookEndpoint, "id", "secret_ciphertext", Purpose.WEBHOOK_SECRETS),
    AtRest(
        "previous webhook secrets",
        WebhookEndpoint,
        "id",
        "previous_secret_ciphertext",
        Purpose.WEBHOOK_SECRETS,
    ),
    AtRest("card numbers", CardToken, "id", "pan_ciphertext", Purpose.VAULT),
)


@dataclass
class Rewrite:
    rewritten: int = 0
    deleted: int = 0  # card numbers whose epoch key is gone: unreadable, so cleared
    failed: list[str] = field(default_factory=list)  # row ids (never secrets)


def add_parser(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="operator: master keys and key rotation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    status = actions.add_parser("status", help="key ids and the rows at rest under each")
    status.add_argument(
        "--open-runs",
        action="store_true",
        help="also count the open Temporal runs holding payloads under each "
        "key (reads every open run's history)",
    )
    rotate = actions.add_parser("rotate", help="new master key, then re-encrypt at rest")
    rotate.add_argument(
        "--reencrypt-only",
        action="store_true",
        help="keep the current key; re-encrypt what is not under it",
    )
    rotate.add_argument(
        "--batch-size", type=_positive, default=BATCH_SIZE, help="rows per database transaction"
    )
    drop = actions.add_parser("drop", help="forget a retired key (local stack)")
    drop.add_argument("key_id")
    drop.add_argument(
        "--force",
        action="store_true",
        help="drop it even if open runs still hold payloads under it",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(settings: Settings, args: argparse.Namespace) -> NoReturn:
    if args.keys_command == "rotate":
        code = asyncio.run(
            rotate(settings, reencrypt_only=args.reencrypt_only, batch_size=args.batch_size)
        )
    elif args.keys_command == "status":
        code = asyncio.run(status(settings, open_runs=args.open_runs))
    else:
        code = asyncio.run(drop(settings, args.key_id, force=args.force))
    # Each may have used a Temporal client, whose threads can abort finalization.
    exit_without_finalizing(code)


# ---- rotate --------------------------------------------------------------------------------
async def rotate(
    settings: Settings, *, reencrypt_only: bool = False, batch_size: int = BATCH_SIZE
) -> int:
    if not reencrypt_only:
        if not settings.master_key_from_files:
            print(
                "durapay keys rotate: DURAPAY_MASTER_KEY is set, so the operator holds the "
                "keys: set a new DURAPAY_MASTER_KEY, move the old one to "
                "DURAPAY_RETIRED_MASTER_KEYS, restart every process, then run `durapay keys "
                "rotate --reencrypt-only`",
                file=sys.stderr,
            )
            return EXIT_FAILED
        settings.resolved_key_ring()  # the first key, if this state dir has none yet
        retired, new = settings.key_files().rotate(new_master_key())
        print(
            f"master key {new.key_id} is current; {retired.key_id} is retired (it still "
            "decrypts what needs it)"
        )
    keys = settings.resolved_key_ring()
    keys.refresh()  # a ring this process read before the rotation above
    print(f"re-encrypting at rest under master key {keys.current.key_id}")
    engine = create_engine(settings.effective_database_url, pool_size=1)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            shredded = await shred_stale_card_numbers(session, datetime.now(UTC), limit=None)
        print(f"{'card numbers deleted (held over a day)':<40} {shredded:>8}")
        epochs = settings.vault_epoch_keys()
        destroyed = epochs.destroy_expired()
        print(f"{'vault epoch keys destroyed':<40} {len(destroyed):>8}")
        failed = 0
        for column in AT_REST:
            result = await reencrypt(sessions, keys, column, batch_size=batch_size, epochs=epochs)
            print(f"{column.label + ' re-encrypted':<40} {result.rewritten:>8}")
            if result.deleted:
                print(f"  {result.deleted} deleted: their vault epoch key is destroyed")
            if result.failed:
                failed += len(result.failed)
                print(
                    f"  {len(result.failed)} could not be decrypted with any key held: "
                    + ", ".join(result.failed[:10])
                )
        counts = await count_at_rest(sessions)
    finally:
        await engine.dispose()
    schedules_left = False
    try:
        async with asyncio.timeout(TEMPORAL_TIMEOUT_SECONDS):
            reencoded = await reencode_schedules(await connect_temporal(settings))
        print(f"{'Temporal schedules re-encoded':<40} {reencoded:>8}")
    except (RuntimeError, TimeoutError, RPCError) as error:
        schedules_left = True
        print(
            f"Temporal schedules not re-encoded (Temporal: {error or 'no answer'}): run "
            "`durapay keys rotate --reencrypt-only` again once it answers"
        )
    written_meanwhile = _not_current(counts, keys) - failed
    if written_meanwhile > 0:
        print(
            f"{written_meanwhile} rows at rest were written under another key meanwhile (by a "
            "process that had not seen the new key yet): run `durapay keys rotate "
            "--reencrypt-only` again"
        )
    return EXIT_FAILED if failed or schedules_left else EXIT_OK


async def reencrypt(
    sessions: Any,
    keys: KeyRing,
    column: AtRest,
    *,
    batch_size: int = BATCH_SIZE,
    epochs: EpochKeys | None = None,
) -> Rewrite:
    """Re-encrypt one column under the current key, a batch of rows per transaction, in id
    order; rows already under it are not even read (their header says so). Card numbers need
    the vault's `epochs`."""
    vault = column.purpose is Purpose.VAULT
    if vault and epochs is None:
        raise ValueError("re-encrypting card numbers needs the vault's epoch keys")
    cipher: Cipher | VaultCipher = (
        VaultCipher(keys, epochs) if epochs is not None and vault else Cipher(keys, column.purpose)
    )
    ids, ciphertexts = column.ids(), column.ciphertexts()
    result = Rewrite()
    after = ""
    while True:
        header = current_vault_header(keys) if vault else current_header(keys)
        async with sessions() as session, session.begin():
            # Locked until the batch commits: a concurrent write of a row (a webhook secret
            # rotated meanwhile) waits, then replaces what we wrote, under whichever key it has.
            rows = (
                await session.exec(
                    select(ids, ciphertexts)
                    .where(
                        ids > after,
                        ciphertexts.is_not(None),
                        func.substring(ciphertexts, 1, len(header)) != header,
                    )
                    .order_by(ids)
                    .limit(batch_size)
                    .with_for_update()
                )
            ).all()
            if not rows:
                return result
            for row_id, blob in rows:
                try:
                    new = cipher.reencrypted(blob, context=row_id)
                except CardNumberDeleted:
                    await session.exec(
                        update(column.table)
                        .where(ids == row_id)
                        .values({column.ciphertext_column: None, "pan_deleted_at": func.now()})
                    )
                    result.deleted += 1
                    continue
                except (InvalidTag, UnknownMasterKey):
                    result.failed.append(row_id)
                    continue
                if new is not None:
                    await session.exec(
                        update(column.table)
                        .where(ids == row_id)
                        .values({column.ciphertext_column: new})
                    )
                    result.rewritten += 1
            after = rows[-1][0]


async def reencode_schedules(client: Client) -> int:
    """Re-encode the workflow input each schedule stores (the reconciliation sweep's) under
    the current key: unlike histories, a schedule is kept at rest and replayed at every run.
    Input this process cannot read is left as it is; returns how many were re-encoded."""
    process_codec = client.data_converter.payload_codec
    assert isinstance(process_codec, PayloadEncryptionCodec)
    reencoded = 0

    async def reencoded_input(update: ScheduleUpdateInput) -> ScheduleUpdate | None:
        nonlocal reencoded
        schedule = update.description.schedule
        action = schedule.action
        if not isinstance(action, ScheduleActionStartWorkflow):
            return None
        # Bound, like every payload, to the workflow id its runs are started under.
        codec = process_codec.with_context(
            WorkflowSerializationContext(namespace=client.namespace, workflow_id=action.id)
        )
        stored = [arg for arg in action.args if isinstance(arg, Payload)]
        if all(arg.metadata.get(KEY_ID_METADATA) == codec.key_id for arg in stored):
            return None
        plain = await codec.decode(stored)
        if any(is_refusal(p) for p in plain):
            return None
        action.args = await codec.encode(plain)
        reencoded += 1
        return ScheduleUpdate(schedule)

    async for listed in await client.list_schedules():
        await client.get_schedule_handle(listed.id).update(reencoded_input)
    return reencoded


# ---- status --------------------------------------------------------------------------------
async def count_at_rest(sessions: Any) -> dict[str, Counter[str]]:
    """Per column, how many rows are under each master key id (`legacy`: no key id)."""
    counts: dict[str, Counter[str]] = {}
    async with sessions() as session:
        for column in AT_REST:
            ciphertexts = column.ciphertexts()
            # Both formats with a key id: `Cipher`'s (1) and the card vault's (2).
            versioned = func.substring(ciphertexts, 1, 1).in_([bytes([1]), bytes([2])])
            key_id = func.encode(func.substring(ciphertexts, 2, 8), "hex")
            rows = (
                await session.exec(
                    select(versioned, key_id, func.count())
                    .where(ciphertexts.is_not(None))
                    .group_by(versioned, key_id)
                )
            ).all()
            counts[column.label] = Counter()
            for has_header, hex_id, n in rows:
                counts[column.label][hex_id if has_header else LEGACY] += n
    return counts


async def status(settings: Settings, *, open_runs: bool = False) -> int:
    keys = settings.resolved_key_ring()
    source = (
        "the state dir's key files"
        if settings.master_key_from_files
        else "DURAPAY_MASTER_KEY / DURAPAY_RETIRED_MASTER_KEYS"
    )
    print(f"keys from {source}")
    print(
        f"current master key  {keys.current.key_id}  "
        f"(Temporal payload key {_payload_key_id(keys.current.material)})"
    )
    for key in keys.retired:
        print(
            f"retired master key  {key.key_id}  "
            f"(Temporal payload key {_payload_key_id(key.material)})"
        )
    epochs = settings.vault_epoch_keys()
    held = epochs.held()
    print(
        f"vault epoch keys    {len(held)} in {epochs.directory}"
        + (f" (oldest: epoch ending {epoch_name(held[0])})" if held else "")
    )
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        counts = await count_at_rest(session_factory(engine))
    finally:
        await engine.dispose()
    names = [k.key_id for k in keys.keys]
    others = sorted({k for c in counts.values() for k in c} - set(names))
    header = ["rows at rest"] + [
        f"{n[:8]}…" + (" (current)" if i == 0 else "") for i, n in enumerate([*names, *others])
    ]
    print("\n" + "  ".join(f"{h:<26}" if j == 0 else f"{h:>20}" for j, h in enumerate(header)))
    for label, by_key in counts.items():
        cells = [str(by_key.get(k, 0)) for k in [*names, *others]]
        print("  ".join([f"{label:<26}", *(f"{c:>20}" for c in cells)]))
    if others:
        print(
            f"{LEGACY}: written before key ids, readable under the current or a retired key; "
            "other ids: keys this ring does not hold. `durapay keys rotate "
            "--reencrypt-only` rewrites both under the current key if it can."
        )
    if open_runs:
        await _print_open_runs(settings, keys)
    left = _not_current(counts, keys)
    if left:
        print(
            f"\n{left} rows at rest are not under the current key: run `durapay keys rotate "
            "--reencrypt-only`"
        )
        return EXIT_PENDING
    return EXIT_OK


def _not_current(counts: dict[str, Counter[str]], keys: KeyRing) -> int:
    return sum(
        n for by_key in counts.values() for k, n in by_key.items() if k != keys.current.key_id
    )


def _payload_key_id(master: bytes) -> str:
    return PayloadKey(master).key_id.decode()


async def open_runs_by_key(settings: Settings, keys: KeyRing) -> Counter[str]:
    """How many open Temporal runs, and schedules (their stored workflow input), hold payloads
    under each master key (by id). Payloads name their key in clear metadata, so the bytes of
    a history say which keys it needs."""
    client = await connect_temporal(settings)
    payload_ids = {key.key_id: PayloadKey(key.material).key_id for key in keys.keys}
    found: Counter[str] = Counter()

    def count(raw: bytes) -> None:
        for key_id, payload_id in payload_ids.items():
            if payload_id in raw:
                found[key_id] += 1

    async for execution in client.list_workflows('ExecutionStatus = "Running"'):
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        count(b"".join(event.SerializeToString() for event in history.events))
    async for listed in await client.list_schedules():
        action = (await client.get_schedule_handle(listed.id).describe()).schedule.action
        if isinstance(action, ScheduleActionStartWorkflow):
            count(
                b"".join(arg.SerializeToString() for arg in action.args if isinstance(arg, Payload))
            )
    return found


async def _print_open_runs(settings: Settings, keys: KeyRing) -> None:
    found = await open_runs_by_key(settings, keys)
    print("\nopen Temporal runs and schedules holding payloads under each key:")
    for key in keys.keys:
        print(f"  {key.key_id}  {found.get(key.key_id, 0)}")


# ---- drop ----------------------------------------------------------------------------------
async def drop(settings: Settings, key_id: str, *, force: bool = False) -> int:
    """Forget a retired key: refused while rows at rest or open runs still need it."""
    if not settings.master_key_from_files:
        print(
            "durapay keys drop: the keys come from DURAPAY_MASTER_KEY and "
            "DURAPAY_RETIRED_MASTER_KEYS: remove the key from the latter and restart",
            file=sys.stderr,
        )
        return EXIT_FAILED
    keys = settings.resolved_key_ring()
    key = keys.find_hex(key_id)
    if key is None or key is keys.current:
        print(
            f"durapay keys drop: {key_id} is not a retired key (current: {keys.current.key_id})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        counts = await count_at_rest(session_factory(engine))
    finally:
        await engine.dispose()
    at_rest = sum(by_key.get(key_id, 0) for by_key in counts.values())
    legacy = sum(by_key.get(LEGACY, 0) for by_key in counts.values())
    if at_rest or legacy:
        print(
            f"durapay keys drop: {at_rest + legacy} rows at rest may still need {key_id}: "
            "run `durapay keys rotate --reencrypt-only` first",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not force:
        runs = (await open_runs_by_key(settings, keys)).get(key_id, 0)
        if runs:
            print(
                f"durapay keys drop: {runs} open Temporal runs or schedules hold payloads "
                f"under {key_id}; wait for the runs to end (`durapay keys rotate "
                "--reencrypt-only` re-encodes the schedules), or --force",
                file=sys.stderr,
            )
            return EXIT_FAILED
    if not settings.key_files().drop(key_id):
        print(
            f"durapay keys drop: {key_id} is not in {settings.key_files().retired_path} "
            "(is it in DURAPAY_RETIRED_MASTER_KEYS?)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"dropped {key_id}")
    return EXIT_OK
