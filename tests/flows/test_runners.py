"""Worker processes report to the flow's own Prefect server, also when that server is the
ephemeral one a process starts without PREFECT_API_URL (`tokenmill refresh` on a laptop,
bench/flow.py): before the fix every spawned worker started a temporary server of its own and
the task runs it recorded were lost with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from flows.runners import RunnerOptions, task_runner

    @task(cache_policy=NONE)
    def api_url(i):
        return os.environ.get("PREFECT_API_URL")

    @flow
    def stages():
        return [f.result() for f in api_url.map([0, 1, 2])]

    @flow
    def outer():
        urls = stages.with_options(task_runner=task_runner(RunnerOptions(kind="process", workers=2)))()
        from prefect.runtime import flow_run
        return urls, str(flow_run.id)

    urls, outer_id = outer()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [outer_id]}))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [c.id for c in children]}))
    print(json.dumps({"urls": urls, "completed": sorted(t.state.type.value for t in tasks if t.name.startswith("api_url"))}))
    """
)


def test_workers_report_to_the_ephemeral_server_of_the_flow(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="240", PREFECT_LOGGING_LEVEL="WARNING")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(set(result["urls"])) == 1 and result["urls"][0].startswith("http://127.0.0.1:"), result
    assert result["completed"] == ["COMPLETED"] * 3, "the workers' task runs are recorded on the flow's server"
