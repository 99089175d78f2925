"""bench/history.py: the counts `make bench` prints for one charged payment's history."""

from __future__ import annotations

import json

from temporalio.api.common.v1 import ActivityType, Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskScheduledEventAttributes,
    History,
    HistoryEvent,
    MarkerRecordedEventAttributes,
)

from activities.card_network import CardNetworkActivities
from bench.history import LOCAL_ACTIVITY_MARKER, NETWORK_ACTIVITIES, summarize

E = EventType


def plain(kind: EventType.ValueType) -> HistoryEvent:
    return HistoryEvent(event_type=kind)


def activity(name: str) -> HistoryEvent:
    return HistoryEvent(
        event_type=E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
            activity_type=ActivityType(name=name)
        ),
    )


def marker(name: str, activity_type: str | None = None) -> HistoryEvent:
    """A marker as the SDK's core writes it for a local activity: JSON `data` detail."""
    details = {}
    if activity_type is not None:
        data = json.dumps({"seq": 1, "activity_type": activity_type}).encode()
        details["data"] = Payloads(payloads=[Payload(data=data)])
    return HistoryEvent(
        event_type=E.EVENT_TYPE_MARKER_RECORDED,
        marker_recorded_event_attributes=MarkerRecordedEventAttributes(
            marker_name=name, details=details
        ),
    )


def workflow_task() -> list[HistoryEvent]:
    return [
        plain(E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        plain(E.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        plain(E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
    ]


def running_charge() -> History:
    """Start, one local activity, the network activity, a timer still pending."""
    return History(
        events=[
            plain(E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
            *workflow_task(),
            plain(E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES),
            plain(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED),
            marker(LOCAL_ACTIVITY_MARKER, "record_charge_attempt"),
            activity("authorize_card"),
            plain(E.EVENT_TYPE_ACTIVITY_TASK_STARTED),
            plain(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED),
            *workflow_task(),
            marker("some_other_marker"),
            activity("record_charge_outcome"),
            plain(E.EVENT_TYPE_TIMER_STARTED),
            plain(E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES),
            plain(E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),  # a task the worker has not completed yet
        ]
    )


def test_counts_a_running_history() -> None:
    summary = summarize(running_charge())

    assert summary.total_events == 18
    assert summary.workflow_tasks_completed == 2
    assert summary.workflow_tasks_after_start == 1
    assert summary.activities_scheduled == ["authorize_card", "record_charge_outcome"]
    assert summary.network_activities == ["authorize_card"]
    assert summary.local_activities == ["record_charge_attempt"]
    assert summary.other_markers == ["some_other_marker"]
    assert summary.timers_started == 1
    assert summary.search_attribute_upserts == 2
    assert not summary.closed
    assert summary.event_types["WORKFLOW_TASK_SCHEDULED"] == 3


def test_a_closed_history_and_a_marker_without_data() -> None:
    history = running_charge()
    history.events.append(marker(LOCAL_ACTIVITY_MARKER))
    history.events.append(plain(E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED))

    summary = summarize(history)

    assert summary.closed
    assert summary.total_events == 20
    assert summary.local_activities == ["record_charge_attempt", "?"]
    # Reading the marker did not add a `data` detail to the event.
    assert "data" not in history.events[-2].marker_recorded_event_attributes.details


def test_an_empty_history() -> None:
    summary = summarize(History())

    assert summary.total_events == 0
    assert summary.workflow_tasks_after_start == 0
    assert summary.activities_scheduled == []


def test_network_activities_are_the_card_network_activities() -> None:
    # The name each activity is registered under, as the SDK's decorator recorded it.
    definitions = (
        getattr(getattr(CardNetworkActivities, name), "__temporal_activity_definition", None)
        for name in dir(CardNetworkActivities)
    )
    names = {definition.name for definition in definitions if definition is not None}
    assert names == NETWORK_ACTIVITIES
