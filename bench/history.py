"""Summarise one workflow history: how much Temporal work a payment costs, in events.

Pure functions over history protos, so the bench and a unit test share them. The workflow may
still be running: the summary counts what the history holds so far.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

# The marker the SDK's core records for each local activity (its result and metadata).
LOCAL_ACTIVITY_MARKER = "core_local_activity"

# The activities of activities/card_network.py: the calls that leave for the card network.
# A literal, so the bench does not import code being rewritten; a unit test keeps it in sync.
NETWORK_ACTIVITIES = frozenset(
    {
        "authorize_card",
        "capture_charge",
        "void_authorization",
        "refund_charge",
        "query_charge_status",
        "reverse_charge",
    }
)

_CLOSING_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)


class HasEvents(Protocol):
    """A `temporalio.api.history.v1.History` proto or a client `WorkflowHistory`."""

    @property
    def events(self) -> Iterable[HistoryEvent]: ...


@dataclass
class HistorySummary:
    total_events: int = 0
    workflow_tasks_completed: int = 0
    activities_scheduled: list[str] = field(default_factory=list)  # activity types, in order
    local_activities: list[str] = field(default_factory=list)  # from the markers, in order
    other_markers: list[str] = field(default_factory=list)  # e.g. patch (version) markers
    timers_started: int = 0
    search_attribute_upserts: int = 0
    closed: bool = False
    event_types: Counter[str] = field(default_factory=Counter)

    @property
    def workflow_tasks_after_start(self) -> int:
        """The first workflow task is the one the start schedules; the rest are the wake-ups a
        payment pays for (updates, activity results, timers)."""
        return max(self.workflow_tasks_completed - 1, 0)

    @property
    def network_activities(self) -> list[str]:
        return [name for name in self.activities_scheduled if name in NETWORK_ACTIVITIES]


def summarize(history: HasEvents) -> HistorySummary:
    summary = HistorySummary()
    for event in history.events:
        summary.total_events += 1
        summary.event_types[_short_name(event.event_type)] += 1
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            summary.workflow_tasks_completed += 1
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            summary.activities_scheduled.append(
                event.activity_task_scheduled_event_attributes.activity_type.name
            )
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            if attributes.marker_name == LOCAL_ACTIVITY_MARKER:
                summary.local_activities.append(_local_activity_type(event))
            else:
                summary.other_markers.append(attributes.marker_name)
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            summary.timers_started += 1
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            summary.search_attribute_upserts += 1
        summary.closed = summary.closed or kind in _CLOSING_EVENTS
    return summary


def _short_name(kind: EventType.ValueType) -> str:
    return EventType.Name(kind).removeprefix("EVENT_TYPE_")


def _local_activity_type(event: HistoryEvent) -> str:
    """Core writes the marker's `data` detail itself, as plain JSON (never through the
    workflow's payload codec), with the activity type among its fields."""
    details = event.marker_recorded_event_attributes.details
    if "data" not in details:  # checked first: reading a missing map key would insert it
        return "?"
    try:
        return str(json.loads(details["data"].payloads[0].data)["activity_type"])
    except (IndexError, KeyError, TypeError, ValueError):
        return "?"
