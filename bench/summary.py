"""`make bench`'s summary: the ratios and costs of the closed-loop steps (bench/charges.py),
each against its target with a PASS or FAIL, and the Temporal history of one charge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.history import HistorySummary
from bench.measurement import Measurement, ratio, verdict

# The Python tier (API, workers, Postgres) against Temporal's own CPU per charge, at most.
PYTHON_TIER_TARGET = 1.0
STATEMENTS_TARGET = 30  # database statements per create + charge, at most
RETRIEVE_API_CPU_TARGET_MS = 2.0  # API CPU per signed retrieve, at most
RETRIEVE_STATEMENTS_TARGET = 3  # database statements per signed retrieve, at most
THROUGHPUT_TARGET = 0.8  # create + charge throughput / bare workflow throughput, at least
LATENCY_TARGET = 1.5  # create + charge p50 / bare workflow p50, at most
EVENTS_TARGET = 20  # history events of one charged payment, at most
WORKFLOW_TASKS_TARGET = 3  # workflow tasks after the start, at most
TOP_STATEMENTS = 15  # of create + charge, printed with their calls per operation


@dataclass
class Results:
    network: Measurement
    bare: Measurement
    create_and_charge: Measurement
    create: Measurement
    retrieve: Measurement
    charge: Measurement | None
    history_of: str | None
    history: HistorySummary | str | None  # a summary, or why there is none


def is_python_tier(process: str) -> bool:
    """Durapay's own processes and its database: what a charge costs besides Temporal (the
    simulator stands in for the card network, and `bench` is the load generator)."""
    return process in ("api", "postgres") or process.startswith("worker-")


def python_tier_ms(per_operation_ms: Mapping[str, float]) -> float:
    return sum(ms for process, ms in per_operation_ms.items() if is_python_tier(process))


def print_summary(results: Results) -> None:
    combined, bare, retrieve = results.create_and_charge, results.bare, results.retrieve
    print("\nsummary (same run, same Temporal dev server)")
    if combined.cpu:
        per_op = combined.cpu.per_operation_ms()
        python, temporal = python_tier_ms(per_op), per_op.get("temporal", float("nan"))
        tier = ratio(python, temporal)
        print(
            f"  Python tier cpu / Temporal cpu      create + charge  {tier:6.2f}x  "
            f"target ≤ {PYTHON_TIER_TARGET}   {verdict(tier <= PYTHON_TIER_TARGET)}"
        )
        parts = " + ".join(
            f"{name} {ms:.1f}" for name, ms in sorted(per_op.items()) if is_python_tier(name)
        )
        print(
            f"      ({parts} = {python:.1f} ms vs temporal {temporal:.1f} ms: each process's "
            "cpu ms/op over the create + charge step; Temporal's share of a charge is the "
            "dev server's cpu over that step)"
        )
    if combined.statements:
        statements = combined.statements.per_operation
        print(
            f"  statements per create + charge      {statements:6.1f}   "
            f"target ≤ {STATEMENTS_TARGET}   {verdict(statements <= STATEMENTS_TARGET)}"
        )
    if retrieve.cpu:
        api_ms = retrieve.cpu.per_operation_ms().get("api", float("nan"))
        print(
            f"  API cpu per signed retrieve         {api_ms:6.2f} ms   "
            f"target ≤ {RETRIEVE_API_CPU_TARGET_MS:g} ms   "
            f"{verdict(api_ms <= RETRIEVE_API_CPU_TARGET_MS)}"
        )
    if retrieve.statements:
        statements = retrieve.statements.per_operation
        print(
            f"  statements per signed retrieve      {statements:6.1f}   "
            f"target ≤ {RETRIEVE_STATEMENTS_TARGET}   "
            f"{verdict(statements <= RETRIEVE_STATEMENTS_TARGET)}"
        )
    throughput = ratio(combined.per_second, bare.per_second)
    latency = ratio(combined.p50, bare.p50)
    print(
        f"  create + charge / bare workflow     throughput {throughput:6.3f}   "
        f"target ≥ {THROUGHPUT_TARGET}   {verdict(throughput >= THROUGHPUT_TARGET)}"
    )
    print(
        f"  create + charge p50 / bare p50      latency    {latency:6.2f}x  "
        f"target ≤ {LATENCY_TARGET}   {verdict(latency <= LATENCY_TARGET)}"
    )
    if combined.cpu and bare.cpu:
        # Both steps keep the cores near saturation, so the throughput ratio is close to the
        # inverse of this one: the CPU a unit of each costs, summed over every process.
        mine, theirs = combined.cpu.total_ms, bare.cpu.total_ms
        print(
            f"  create + charge / bare workflow     cpu        {ratio(mine, theirs):6.2f}x  "
            f"({mine:.1f} ms vs {theirs:.1f} ms per unit, all processes)"
        )
    network, retrieve, charge = results.network, results.retrieve, results.charge
    if charge:
        print(
            f"  charge / network authorize          throughput "
            f"{ratio(charge.per_second, network.per_second):6.3f}"
            "   (what orchestration + durability cost over the bare network call)"
        )
        print(
            f"  charge / retrieve intent            throughput "
            f"{ratio(charge.per_second, retrieve.per_second):6.3f}"
            "   (a charge against the API's cheapest signed read)"
        )
    print(
        f"  create / retrieve intent            throughput "
        f"{ratio(results.create.per_second, retrieve.per_second):6.3f}"
    )
    if charge:
        print(
            f"  charge p50 / network p50            latency    "
            f"{ratio(charge.p50, network.p50):6.1f}x"
            "   (latency a cardholder waits, against the network's own)"
        )
    print_top_statements(combined)
    print_history(results.history_of, results.history)


def print_top_statements(step: Measurement) -> None:
    if not step.statements:
        return
    print(
        f"\nstatements of {step.name}, most run first (calls per operation; "
        "`nested`: run inside another statement, such as a foreign-key check)"
    )
    for text, per_operation in step.statements.top(TOP_STATEMENTS):
        print(f"  {per_operation:6.2f}  {text}")


def print_history(intent_id: str | None, history: HistorySummary | str | None) -> None:
    if intent_id is None or history is None:
        print("\nhistory: no payment was charged in the create + charge step")
        return
    if isinstance(history, str):
        print(f"\nhistory of {intent_id}: {history}")
        return
    state = "closed" if history.closed else "still running"
    print(f"\nhistory of one charged payment ({intent_id}, {state} when read)")
    print(
        f"  events                      {history.total_events:4d}   "
        f"target ≤ {EVENTS_TARGET}   {verdict(history.total_events <= EVENTS_TARGET)}"
    )
    after = history.workflow_tasks_after_start
    print(
        f"  workflow tasks completed    {history.workflow_tasks_completed:4d}   "
        f"the first handles the start, so {after} after it; target ≤ {WORKFLOW_TASKS_TARGET}"
        f" after it   {verdict(after <= WORKFLOW_TASKS_TARGET)}"
    )
    scheduled, network = history.activities_scheduled, history.network_activities
    # One activity in all, and that one the network call: everything else local or in-workflow.
    one_network = len(scheduled) == 1 and len(network) == 1
    print(
        f"  activities scheduled        {len(scheduled):4d}   "
        f"({len(network)} network)   target exactly 1, the network call   "
        f"{verdict(one_network)}"
    )
    if scheduled:
        print(f"      {', '.join(scheduled)}")
    print(
        f"  local activities (markers)  {len(history.local_activities):4d}"
        + (f"   {', '.join(history.local_activities)}" if history.local_activities else "")
    )
    if history.other_markers:  # so MARKER_RECORDED below is not mistaken for local activities
        print(
            f"  other markers               {len(history.other_markers):4d}   "
            f"{', '.join(history.other_markers)}"
        )
    print(f"  timers started              {history.timers_started:4d}")
    print(f"  search attribute upserts    {history.search_attribute_upserts:4d}")
    print(
        "  by event type: "
        + ", ".join(f"{name} {n}" for name, n in history.event_types.most_common())
    )


def print_scaling(one: Measurement, two: Measurement, workers: int) -> None:
    print(
        f"\nscaling (create + charge, a fresh stack each; {workers} → {workers * 2} "
        "worker processes)"
    )
    print(f"  {workers} worker(s)   {one.per_second:8.1f}/s   p50 {one.p50 * 1000:7.1f} ms")
    print(f"  {workers * 2} worker(s)   {two.per_second:8.1f}/s   p50 {two.p50 * 1000:7.1f} ms")
    print(
        f"  {workers * 2} / {workers} workers: throughput "
        f"{ratio(two.per_second, one.per_second):5.2f}x   p50 {ratio(two.p50, one.p50):5.2f}x"
    )
