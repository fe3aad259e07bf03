"""Where mapped tasks run: worker processes on this machine (default), an existing Dask
cluster by address, or threads. Chosen per flow run by a parameter."""

import os
from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from pipeline.settings import ENV_DASK_ADDRESS


class RunnerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["process", "dask", "threads"] = Field(
        "process",
        description="process: a local pool of worker processes (default: measured fastest here, bench/flow.py); "
        "dask: the Dask cluster at dask_address, or a local one; threads: in-process",
    )
    workers: int = Field(2, ge=1, le=512, description="parallel workers for process/threads")
    dask_address: str | None = Field(None, description=f"tcp://host:8786 of a Dask scheduler (default ${ENV_DASK_ADDRESS})")


def share_api_url() -> str | None:
    """Make worker processes report to this process's Prefect server.

    Without PREFECT_API_URL a flow runs against an ephemeral server this process started, and
    Prefect hands workers only the settings that were set: every spawned worker then started
    its own temporary server (seconds of CPU each, and the task runs it recorded were lost
    with it). Exporting the ephemeral server's address before the pool starts makes workers,
    local Dask workers and their children use the one server. Returns the URL in use."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    url = PREFECT_API_URL.value()
    if url:
        return url
    if not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance this process's client uses (started once)
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


def task_runner(options: RunnerOptions):
    if options.kind != "threads":
        share_api_url()
    if options.kind == "dask":
        from prefect_dask import DaskTaskRunner

        address = options.dask_address or os.environ.get(ENV_DASK_ADDRESS)
        if address:
            return DaskTaskRunner(address=address)
        # No cluster given: a local one, one single-threaded worker process per worker.
        return DaskTaskRunner(cluster_kwargs={"n_workers": options.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    if options.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=options.workers)
    return ProcessPoolTaskRunner(max_workers=options.workers)
