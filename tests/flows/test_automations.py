"""The dead-run automation `tokenmill up` installs: one per server however often it is installed,
its window derived from the heartbeat interval, and refused where heartbeats are off (it would
mark every run Crashed). That it marks a SIGKILLed run Crashed is tested end to end in
test_stack.py."""

from __future__ import annotations

from datetime import timedelta

import pytest


def test_installing_twice_keeps_one_automation(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.automations import MISSED_HEARTBEATS, ZOMBIE_AUTOMATION, ensure_automations

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        ensure_automations()
        with get_client(sync_client=True) as client:
            first = client.read_automations_by_name(ZOMBIE_AUTOMATION)
        ensure_automations()
        with get_client(sync_client=True) as client:
            again = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    assert len(first) == 1 and [a.id for a in again] == [first[0].id], "an unchanged automation is kept, not replaced"
    trigger = again[0].trigger
    assert trigger.within == timedelta(seconds=MISSED_HEARTBEATS * 30)
    assert "prefect.flow-run.heartbeat" in trigger.expect and "prefect.flow-run.Completed" in trigger.expect
    assert again[0].actions[0].type == "change-flow-run-state" and again[0].actions[0].state.value == "CRASHED"

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        ensure_automations()  # a changed interval replaces the automation
        with get_client(sync_client=True) as client:
            changed = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    assert len(changed) == 1 and changed[0].trigger.within == timedelta(seconds=MISSED_HEARTBEATS * 60)


def test_refused_when_heartbeats_are_off(prefect_harness):
    from flows.automations import ensure_automations

    # the harness turns heartbeats off (tests/conftest.py)
    with pytest.raises(RuntimeError, match="PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        ensure_automations()
