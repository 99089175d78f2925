"""Worker process: wiring only. Builds the clients, the activity instances and the Worker.

Run several of these for horizontal scale; they share the task queue.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable
from datetime import timedelta

import httpx
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.audit import AuditActivities
from activities.card_network import CardNetworkActivities
from activities.housekeeping import HousekeepingActivities
from activities.persistence import PaymentRecordActivities
from activities.reconciliation import ReconciliationActivities
from activities.webhook_reaper import WebhookReaperActivities
from activities.webhooks import WebhookActivities, new_http_client
from core.crypto import Cipher, VaultCipher
from core.db.session import create_engine, session_factory
from core.keyring import Purpose
from core.logs import configure_logging
from core.loop_lag import watch_loop_lag
from core.metrics import WORKER_LOOP_LAG
from core.settings import get_settings
from core.telemetry import instrument_httpx, setup_tracing
from core.temporal_client import connect_temporal
from core.vault_epochs import destroy_expired_periodically
from workers.health_server import HealthServer, postgres_check, start_sdk_metrics, temporal_check
from workers.schedules import ensure_schedules, schedules_paused
from workflows.audit_checkpoint import AuditCheckpointWorkflow
from workflows.housekeeping import HousekeepingWorkflow
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.reconciliation import ReconciliationSweepWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow
from workflows.webhook_reaper import WebhookReaperWorkflow

log = logging.getLogger("durapay.worker")


async def run_worker() -> None:
    settings = get_settings()
    engine = create_engine(settings.effective_database_url)
    sessions = session_factory(engine)
    sdk_metrics_url = start_sdk_metrics()  # creates the runtime: before any connection
    client = await connect_temporal(settings)
    keys = settings.resolved_key_ring()  # the same ring as the client's codec
    async with httpx.AsyncClient() as http, new_http_client() as webhook_http:
        # The card network's calls carry the trace to the simulator; webhooks to merchants
        # get no traceparent (their receivers are outside our traces).
        instrument_httpx(http)
        records = PaymentRecordActivities(sessions, engine)
        network = CardNetworkActivities(
            http=http,
            sessions=sessions,
            vault=VaultCipher(keys, settings.vault_epoch_keys()),
            base_url=settings.effective_cardnet_url,
            timeout_seconds=settings.network_timeout_seconds,
        )
        reconciliation = ReconciliationActivities(
            sessions=sessions, http=http, cardnet_url=settings.effective_cardnet_url
        )
        audit = AuditActivities(engine)
        housekeeping = HousekeepingActivities(
            engine=engine,
            sessions=sessions,
            idempotency_retention=timedelta(seconds=settings.idempotency_retention_seconds),
        )
        reaper = WebhookReaperActivities(sessions)
        webhooks = WebhookActivities(
            http=webhook_http,
            sessions=sessions,
            webhook_secrets=Cipher(keys, Purpose.WEBHOOK_SECRETS),
            settings=settings,
        )
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[
                PaymentIntentWorkflow,
                WebhookDeliveryWorkflow,
                ReconciliationSweepWorkflow,
                AuditCheckpointWorkflow,
                HousekeepingWorkflow,
                WebhookReaperWorkflow,
            ],
            activities=[
                records.load_payment,
                records.record_charge_attempt,
                records.record_operation_attempt,
                records.record_outcome,
                records.cancel_payment_intent,
                records.flag_for_manual_review,
                records.record_outcome_discrepancy,
                records.record_reversal_attempt,
                network.authorize_card,
                network.capture_charge,
                network.void_authorization,
                network.refund_charge,
                network.query_charge_status,
                network.reverse_charge,
                webhooks.send_webhook,
                webhooks.record_webhook_attempt,
                webhooks.fail_webhook_delivery,
                reaper.find_stranded_deliveries,
                reconciliation.reconcile_window,
                audit.record_chain_checkpoints,
                housekeeping.delete_expired_nonces,
                housekeeping.delete_expired_idempotency_records,
                housekeeping.shred_stale_card_numbers,
            ],
            # The records run as local activities, in slots of their own: the same bound.
            max_concurrent_activities=settings.worker_max_concurrent_activities,
            max_concurrent_local_activities=settings.worker_max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
            graceful_shutdown_timeout=timedelta(seconds=10),
            workflow_runner=(
                SandboxedWorkflowRunner()
                if settings.workflow_sandbox
                else UnsandboxedWorkflowRunner()
            ),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        health = await HealthServer.start(
            settings.worker_metrics_host,
            settings.worker_metrics_port + settings.worker_index,
            checks={"postgres": postgres_check(sessions), "temporal": temporal_check(client)},
            sessions=sessions,
            sdk_metrics_url=sdk_metrics_url,
            schedule_states=lambda: schedules_paused(client),
        )
        log.info(
            "worker metrics, livez and readyz on %s port %d",
            settings.worker_metrics_host,
            health.port,
        )
        await ensure_schedules(client, settings)
        # Every worker destroys the card vault's expired epoch keys: no single process, nor
        # Temporal, has to be up for card numbers to be deleted on time.
        destroyer = asyncio.create_task(destroy_expired_periodically(settings.vault_epoch_keys()))
        lag_watcher = asyncio.create_task(watch_loop_lag(WORKER_LOOP_LAG.observe))
        log.info("worker polling task queue %s", settings.task_queue)
        # As in the API (api/main.py): what start-up built lives as long as the process, and
        # frozen it is left out of the collector's full passes, which pause every task.
        gc.freeze()
        async with worker:
            if settings.worker_ready_file:  # tells a supervisor this worker is polling
                settings.worker_ready_file.write_text(str(os.getpid()))
            await stop.wait()
        lag_watcher.cancel()
        destroyer.cancel()
        await health.close()
    await engine.dispose()


def main() -> None:
    configure_logging("worker")
    # Before connecting: the client's (and so the Worker's) interceptors depend on it.
    setup_tracing("durapay-worker")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run_worker())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop: the worker's event loop costs a fraction of asyncio's own per activity and
    workflow task. The default loop where the platform has no uvloop (Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
