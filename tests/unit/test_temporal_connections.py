"""Every Durapay process reaches Temporal through `core.temporal_client.connect_temporal`, the
one place that applies the TLS / API-key settings (and the payload codec): a module that called
`Client.connect` itself would connect in plaintext, unauthenticated, whatever production
requires. Read from the source's syntax tree (imports and attribute accesses, aliases
resolved), so a comment or a string naming `Client.connect` does not count and an alias does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THE_ONE_PLACE = Path("core/temporal_client.py")
# Not Durapay processes: tests drive Temporal directly (a client without the codec shows what
# the server holds), and bench/ measures the bare SDK.
NOT_SCANNED = ("tests", "bench", ".venv", ".git")
CONNECTING_CLASSES = {"temporalio.client.Client", "temporalio.service.ServiceClient"}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def direct_connections(source: str) -> list[int]:
    """Line numbers where `source` reaches `Client.connect` / `ServiceClient.connect` of the
    Temporal SDK, under whatever name it imported them."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> the module or class it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:  # `import temporalio.client` binds `temporalio`
                    top = alias.name.split(".")[0]
                    names[top] = top
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "connect":
            target = _dotted(node.value)
            if target is None:
                continue
            head, _, rest = target.partition(".")
            resolved = names.get(head, head) + (f".{rest}" if rest else "")
            if resolved in CONNECTING_CLASSES:
                lines.append(node.lineno)
    return lines


def durapay_modules() -> list[Path]:
    return sorted(
        path.relative_to(ROOT)
        for path in ROOT.rglob("*.py")
        if path.relative_to(ROOT).parts[0] not in NOT_SCANNED
    )


def test_no_process_connects_to_temporal_but_through_connect_temporal() -> None:
    modules = durapay_modules()
    # The scan covers every package a Durapay process runs.
    assert {m.parts[0] for m in modules} >= {
        "api",
        "workers",
        "cli",
        "core",
        "activities",
        "workflows",
    }
    offenders = {
        str(path): lines
        for path in modules
        if path != THE_ONE_PLACE and (lines := direct_connections((ROOT / path).read_text()))
    }
    assert offenders == {}, (
        "connect through core.temporal_client.connect_temporal, which "
        f"applies DURAPAY_TEMPORAL_TLS_* and the API key: {offenders}"
    )
    assert direct_connections((ROOT / THE_ONE_PLACE).read_text())


@pytest.mark.parametrize(
    "source",
    [
        "from temporalio.client import Client\nasync def f():\n    await Client.connect('x')\n",
        "from temporalio.client import Client as C\nconnect = C.connect\n",
        "import temporalio.client\n"
        "async def f():\n    await temporalio.client.Client.connect('x')\n",
        "import temporalio.client as tc\nasync def f():\n    await tc.Client.connect('x')\n",
        "from temporalio import client\nasync def f():\n    await client.Client.connect('x')\n",
        "from temporalio.service import ServiceClient\nasync def f():\n"
        "    await ServiceClient.connect(None)\n",
    ],
)
def test_the_scan_finds_a_direct_connection_under_any_name(source: str) -> None:
    assert direct_connections(source)


@pytest.mark.parametrize(
    "source",
    [
        "# Client.connect is not called here\nx = 'Client.connect'\n",
        "import asyncpg\nasync def f():\n    await asyncpg.connect('x')\n",
        "from core.temporal_client import connect_temporal\n",
    ],
)
def test_the_scan_ignores_what_is_not_a_temporal_connection(source: str) -> None:
    assert direct_connections(source) == []
