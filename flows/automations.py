"""Server-side automations the stack relies on, created idempotently by `tokenmill up` (and by
`python -m flows.automations` where workers run elsewhere: compose, Kubernetes).

Zombie runs: a flow run whose process died (SIGKILL, OOM, a lost node) cannot report its own
end and would show RUNNING forever. Every flow run emits `prefect.flow-run.heartbeat` events
every `heartbeat_seconds()`; when a run that has sent one sends neither another heartbeat nor
a state change within `MISSED_HEARTBEATS` intervals, the server marks it CRASHED.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Prefect is imported where it is used: the CLI sets its environment first
    from prefect.automations import Automation, AutomationCore

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
# What tokenmill's processes use (the CLI, `up`, `demo`, env.sh): Prefect's minimum. Prefect's
# own default (180 s) would leave a dead run RUNNING for 9 minutes.
HEARTBEAT_SECONDS = 30
MISSED_HEARTBEATS = 3  # tolerate two late heartbeats on a loaded machine before declaring a run dead
ZOMBIE_AUTOMATION = "tokenmill: crash flow runs that stopped sending heartbeats"

# Events after which no heartbeat is due: the run ended, waits for a retry, or is paused.
_HEARTBEAT_NOT_DUE = ["Completed", "Failed", "Cancelled", "Crashed", "AwaitingRetry", "Paused", "Suspended"]


def default_heartbeat_env() -> None:
    """Make this process (and its children) send heartbeats every HEARTBEAT_SECONDS unless
    the environment says otherwise; call before Prefect is imported."""
    os.environ.setdefault(HEARTBEAT_ENV, str(HEARTBEAT_SECONDS))


def heartbeat_seconds() -> int | None:
    """The heartbeat interval of flow runs in this environment (None: heartbeats are off).
    The zombie window is derived from it, so the automation and the processes that run flows
    must share this setting (`tokenmill` and env.sh set 30 s; where workers run elsewhere, set
    it in their environment too: prefect.yaml says so)."""
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL
    from prefect.settings import get_current_settings

    value = get_current_settings().flows.heartbeat_frequency
    return None if value is None else max(value, MINIMUM_HEARTBEAT_INTERVAL)


def zombie_automation(heartbeat: int | None = None) -> "Automation":
    from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.schemas.events import ResourceSpecification

    heartbeat = heartbeat or heartbeat_seconds() or HEARTBEAT_SECONDS
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run that sent a heartbeat and then nothing for {MISSED_HEARTBEATS} x {heartbeat}s is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in _HEARTBEAT_NOT_DUE)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=MISSED_HEARTBEATS * heartbeat),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {MISSED_HEARTBEATS * heartbeat}s: the flow run's process died")],
    )


def ensure_automations() -> list[str]:
    """Create or update tokenmill's automations on the server PREFECT_API_URL names; one
    automation per name however often this runs."""
    from prefect.automations import AutomationCore
    from prefect.client.orchestration import get_client

    if heartbeat_seconds() is None:
        raise RuntimeError(f"{HEARTBEAT_ENV} turns flow run heartbeats off: dead runs could not be detected")
    wanted = [zombie_automation()]
    with get_client(sync_client=True) as client:
        for automation in wanted:
            body = AutomationCore(**automation.model_dump(exclude={"id"}))
            existing = client.read_automations_by_name(automation.name)
            # An unchanged automation is kept (a replaced one would forget the runs it watches).
            same = [a for a in existing if _definition(a) == _definition(body)]
            for stale in existing if not same else [a for a in existing if a is not same[0]]:
                client.delete_automation(stale.id)
            if not same:
                client.create_automation(body)
    return [a.name for a in wanted]


def _definition(automation: "AutomationCore") -> dict:
    """What makes two automations the same, comparable across a round trip through the server
    (sets such as `expect` and `for_each` come back as lists in any order)."""
    return _canonical(automation.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions", "actions_on_trigger", "actions_on_resolve"}))


def _canonical(value):
    import json

    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


if __name__ == "__main__":
    for name in ensure_automations():
        print(f"automation ready: {name}")
