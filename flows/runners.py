"""Where mapped tasks run: worker processes on this machine (default), an existing Dask
cluster by address, or threads. Chosen per flow run by a parameter."""

import os
from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from pipeline.settings import ENV_DASK_ADDRESS


class RunnerOptions(BaseModel):
    kind: Literal["process", "dask", "threads"] = Field(
        "process", description="process: a local pool of worker processes; dask: an existing Dask cluster; threads: in-process"
    )
    workers: int = Field(2, ge=1, le=512, description="parallel workers for process/threads")
    dask_address: str | None = Field(None, description=f"tcp://host:8786 of a Dask scheduler (default ${ENV_DASK_ADDRESS})")


def task_runner(options: RunnerOptions):
    if options.kind == "dask":
        from prefect_dask import DaskTaskRunner

        address = options.dask_address or os.environ.get(ENV_DASK_ADDRESS)
        if not address:
            raise ValueError(f"runner kind 'dask' needs dask_address or ${ENV_DASK_ADDRESS}")
        return DaskTaskRunner(address=address)
    if options.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=options.workers)
    return ProcessPoolTaskRunner(max_workers=options.workers)
