"""Temporal Schedules the workers keep in place: wiring only, no business logic.

Every worker calls `ensure_schedules` at start-up (the reconciliation sweep, the audit
checkpoint, housekeeping and the webhook reaper), so the schedules exist wherever workers
run and follow the configured intervals after a redeploy. Several workers starting at once are
safe: creation is atomic on the server (the losers see "already running"), and an update goes
through the schedule's conflict token, retried by the SDK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from core.metrics import SCHEDULE_READ_SECONDS
from core.reconciliation import SweepTrigger
from core.settings import Settings
from core.webhooks import schedule_from
from workflows.audit_checkpoint import AuditCheckpointWorkflow
from workflows.housekeeping import HousekeepingWorkflow
from workflows.reconciliation import ReconciliationSweepInput, ReconciliationSweepWorkflow
from workflows.webhook_reaper import WebhookReaperInput, WebhookReaperWorkflow

log = logging.getLogger("durapay.worker")

RECONCILIATION_SCHEDULE_ID = "durapay-reconciliation-sweep"
AUDIT_CHECKPOINT_SCHEDULE_ID = "durapay-audit-checkpoint"
HOUSEKEEPING_SCHEDULE_ID = "durapay-housekeeping"
WEBHOOK_REAPER_SCHEDULE_ID = "durapay-webhook-reaper"
SCHEDULE_IDS = (
    RECONCILIATION_SCHEDULE_ID,
    AUDIT_CHECKPOINT_SCHEDULE_ID,
    HOUSEKEEPING_SCHEDULE_ID,
    WEBHOOK_REAPER_SCHEDULE_ID,
)


def reconciliation_schedule(settings: Settings) -> Schedule:
    return _every(
        settings.reconcile_sweep_interval_seconds,
        ScheduleActionStartWorkflow(
            ReconciliationSweepWorkflow.run,
            ReconciliationSweepInput(
                settings.reconcile_sweep_window_seconds,
                SweepTrigger.SCHEDULE,
                settings.reconcile_stuck_after_seconds,
            ),
            # Temporal appends the scheduled time, so each sweep has its own workflow id.
            id=RECONCILIATION_SCHEDULE_ID,
            task_queue=settings.task_queue,
        ),
    )


def audit_checkpoint_schedule(settings: Settings) -> Schedule:
    return _every(
        settings.audit_checkpoint_interval_seconds,
        ScheduleActionStartWorkflow(
            AuditCheckpointWorkflow.run,
            id=AUDIT_CHECKPOINT_SCHEDULE_ID,
            task_queue=settings.task_queue,
        ),
    )


def housekeeping_schedule(settings: Settings) -> Schedule:
    return _every(
        settings.housekeeping_interval_seconds,
        ScheduleActionStartWorkflow(
            HousekeepingWorkflow.run, id=HOUSEKEEPING_SCHEDULE_ID, task_queue=settings.task_queue
        ),
    )


def webhook_reaper_schedule(settings: Settings) -> Schedule:
    return _every(
        settings.webhook_reaper_interval_seconds,
        ScheduleActionStartWorkflow(
            WebhookReaperWorkflow.run,
            WebhookReaperInput(settings.webhook_reaper_grace_seconds, schedule_from(settings)),
            id=WEBHOOK_REAPER_SCHEDULE_ID,
            task_queue=settings.task_queue,
        ),
    )


def _every(seconds: int, action: ScheduleActionStartWorkflow) -> Schedule:
    """Every schedule's runs cover everything before them (a sweep's windows overlap; a
    checkpoint takes every head; housekeeping deletes all that expired; a reaper starts every
    stranded delivery): one still running when the next is due makes the next redundant, and
    after an outage one catch-up run is enough, not one per missed interval."""
    interval = timedelta(seconds=seconds)
    return Schedule(
        action=action,
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=max(interval, timedelta(minutes=1))
        ),
    )


async def ensure_schedules(client: Client, settings: Settings) -> None:
    await ensure_reconciliation_schedule(client, settings)
    await ensure_schedule(client, AUDIT_CHECKPOINT_SCHEDULE_ID, audit_checkpoint_schedule(settings))
    await ensure_schedule(client, HOUSEKEEPING_SCHEDULE_ID, housekeeping_schedule(settings))
    await ensure_schedule(client, WEBHOOK_REAPER_SCHEDULE_ID, webhook_reaper_schedule(settings))


async def ensure_reconciliation_schedule(client: Client, settings: Settings) -> None:
    await ensure_schedule(client, RECONCILIATION_SCHEDULE_ID, reconciliation_schedule(settings))


async def ensure_schedule(client: Client, schedule_id: str, desired: Schedule) -> None:
    """Create a schedule, or bring an existing one to the configured settings."""
    every = [str(i.every) for i in desired.spec.intervals]
    try:
        await client.create_schedule(schedule_id, desired)
        log.info("created schedule %s (every %s)", schedule_id, ", ".join(every))
        return
    except ScheduleAlreadyRunningError:
        pass

    async def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        if await _is_current(client, current.description, desired):
            return None
        log.info("updating schedule %s (every %s)", schedule_id, ", ".join(every))
        # Keep the state: an operator who paused the schedule keeps it paused across restarts.
        state = current.description.schedule.state
        return ScheduleUpdate(dataclasses.replace(desired, state=state))

    await client.get_schedule_handle(schedule_id).update(update)


async def _is_current(client: Client, description: ScheduleDescription, desired: Schedule) -> bool:
    current = description.schedule
    action, wanted = current.action, desired.action
    if not (
        isinstance(action, ScheduleActionStartWorkflow)
        and isinstance(wanted, ScheduleActionStartWorkflow)
    ):
        return False
    if (
        [i.every for i in current.spec.intervals] != [i.every for i in desired.spec.intervals]
        or current.policy.overlap != desired.policy.overlap
        or (action.workflow, action.task_queue) != (wanted.workflow, wanted.task_queue)
    ):
        return False
    if not wanted.args:
        return not action.args
    try:
        # Described args are raw payloads: decode them to compare (the window, the grace).
        [args] = await client.data_converter.decode(action.args, [type(wanted.args[0])])
    except Exception:  # noqa: BLE001  (an undecodable action is simply replaced)
        return False
    return bool(args == wanted.args[0])


async def schedules_paused(client: Client) -> dict[str, bool | None]:
    """Whether each of the workers' schedules is paused, for the worker's metrics (core/
    metrics.py, ScheduleGauges). One deleted counts as paused: it fires no more until a worker
    restarts and re-creates it. None when Temporal did not answer."""

    async def paused(schedule_id: str) -> bool | None:
        try:
            described = await client.get_schedule_handle(schedule_id).describe(
                rpc_timeout=timedelta(seconds=SCHEDULE_READ_SECONDS)
            )
        except RPCError as error:
            return True if error.status == RPCStatusCode.NOT_FOUND else None
        return described.schedule.state.paused

    states = await asyncio.gather(*(paused(schedule_id) for schedule_id in SCHEDULE_IDS))
    return dict(zip(SCHEDULE_IDS, states, strict=True))
