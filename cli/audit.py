"""`durapay audit`: prove the audit trail is whole.

    durapay audit verify [--merchant M]     walk the hash chains; exit 1 at the first break

Each event stores a hash over its contents and its predecessor's hash, one chain per merchant
(core/audit_chain.py). `verify` walks every chain (or merchant M's) from its first event and
checks each link, the order the events were recorded in, the chain's head, and the heads the
`durapay-audit-checkpoint` schedule recorded (so events deleted from a chain's end are found
too). It prints one line per chain and, for a broken one, the first broken or missing link with
its event id. Read only; safe while payments run (it checks one consistent snapshot).
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
    verify.add_argument("--merchant", help="only this merchant's chain (mer_…)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(verify(settings, args.merchant))


async def verify(settings: Settings, merchant_id: str | None) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        report = await verify_chains(engine, merchant_id)
    finally:
        await engine.dispose()
    for chain in report.chains:
        state = f"BROKEN at {chain.broken}" if chain.broken else "ok"
        print(f"{chain.chain}: {chain.events} events verified, {state}")
    if report.first_broken:
        print(f"audit: the trail is broken: {report.first_broken}")
        return 1
    print(f"audit: {len(report.chains)} chains, {report.events} events, every link holds")
    return 0
