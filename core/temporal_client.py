"""One way to connect to Temporal, so every process encrypts payloads the same way."""

from __future__ import annotations

from temporalio.client import Client

from core.codec import data_converter
from core.settings import Settings


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(settings.effective_temporal_address,
                                namespace=settings.temporal_namespace,
                                data_converter=data_converter(settings.resolved_master_key()))
