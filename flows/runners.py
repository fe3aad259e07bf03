"""Where mapped tasks run: worker processes on this machine (default), an existing Dask
cluster by address, or threads. Chosen per flow run by a parameter."""

import os
from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from pipeline.settings import ENV_DASK_ADDRESS


class RunnerOptions(BaseModel):
    kind: Literal["process", "dask", "threads"] = Field(
        "process",
        description="process: a local pool of worker processes (default: measured fastest here, bench/flow.py); "
        "dask: the Dask cluster at dask_address, or a local one; threads: in-process",
    )
    workers: int = Field(2, ge=1, le=512, description="parallel workers for process/threads")
    dask_address: str | None = Field(None, description=f"tcp://host:8786 of a Dask scheduler (default ${ENV_DASK_ADDRESS})")


def task_runner(options: RunnerOptions):
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
