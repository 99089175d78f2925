"""Register Durapay's search attributes on a Temporal namespace (external servers)."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from core.search_attributes import ALL


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the ones the namespace lacks; returns their names. Safe to run on every start."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = [key for key in ALL if key.name not in known]
    if missing:
        await add_search_attributes(client, namespace, missing)
    return sorted(key.name for key in missing)


async def add_search_attributes(
    client: Client, namespace: str, keys: Sequence[SearchAttributeKey] = ALL
) -> None:
    """Register without asking first (the time-skipping test server cannot list them)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            search_attributes={
                key.name: IndexedValueType.ValueType(int(key.indexed_value_type)) for key in keys
            },
            namespace=namespace,
        )
    )
