"""Worker process: wiring only. Builds the clients, the activity instances and the Worker.

Run several of these for horizontal scale; they share the task queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.card_network import CardNetworkActivities
from activities.persistence import PaymentRecordActivities
from core.crypto import Cipher
from core.db.session import create_engine, session_factory
from core.settings import get_settings
from workflows.payment_intent import PaymentIntentWorkflow

log = logging.getLogger("durapay.worker")


async def run_worker() -> None:
    settings = get_settings()
    engine = create_engine(settings.effective_database_url)
    sessions = session_factory(engine)
    client = await Client.connect(settings.effective_temporal_address,
                                  namespace=settings.temporal_namespace)
    async with httpx.AsyncClient() as http:
        records = PaymentRecordActivities(sessions)
        network = CardNetworkActivities(
            http=http, sessions=sessions, cipher=Cipher(settings.resolved_master_key()),
            base_url=settings.effective_cardnet_url,
            timeout_seconds=settings.network_timeout_seconds)
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[PaymentIntentWorkflow],
            activities=[
                records.record_charge_attempt,
                records.record_charge_outcome,
                network.authorize_card,
                network.query_charge_status,
            ],
            graceful_shutdown_timeout=timedelta(seconds=10),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("worker polling task queue %s", settings.task_queue)
        async with worker:
            await stop.wait()
    await engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
