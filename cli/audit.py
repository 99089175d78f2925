"""`durapay audit`: prove the audit trail is whole.

    durapay audit verify [--merchant M]     walk the hash chains; exit 1 at the first break

Each event stores a hash over its contents and its predecessor's hash, one chain per payment
(or endpoint, or discrepancy), and the `durapay-audit-checkpoint` schedule records the heads of
the chains that moved in a hash-linked chain of checkpoints per merchant (core/audit_chain.py).
`verify` walks every chain (or merchant M's) from its first event and checks each link, the
order the events were recorded in, every head a checkpoint recorded (so events deleted from a
chain's end, or a whole chain, are found too), and each merchant's checkpoints: their links,
their hashes and their Merkle roots. It prints one line per merchant and, for a broken one,
the first broken or missing link with its event id. Read only; safe while payments run (it
checks one consistent snapshot).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from core.db.audit import verify_chains
from core.db.session import create_engine
from core.settings import Settings


def add_parser(commands: Any) -> None:
    audit = commands.add_parser("audit", help="operator: verify the audit trail's hash chains")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="walk the chains; exit 1 at a break")
    verify.add_argument("--merchant", help="only this merchant's chains and checkpoints (mer_…)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(verify(settings, args.merchant))


async def verify(settings: Settings, merchant_id: str | None) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        report = await verify_chains(engine, merchant_id)
    finally:
        await engine.dispose()
    for scope in report.scopes.values():
        state = f"BROKEN at {scope.broken}" if scope.broken else "ok"
        if scope.broken_chains > 1:
            state += f" (and {scope.broken_chains - 1} more broken)"
        print(
            f"{scope.scope}: {scope.chains} chains, {scope.events} events, "
            f"{scope.checkpoints} checkpoints verified, {state}"
        )
    if report.first_broken:
        print(f"audit: the trail is broken: {report.first_broken}")
        return 1
    print(
        f"audit: {len(report.scopes)} scopes, {report.chains} chains, {report.events} "
        f"events, {report.checkpoints} checkpoints, every link holds"
    )
    return 0
