"""Serve tokenmill's deployments from one process (what `tokenmill up` runs).

- `ingest/ad-hoc`: run on demand from the UI or `prefect deployment run`.
- `corpus-refresh/scheduled`: the cron refresh of everything under `$TOKENMILL_DATA_ROOT/raw/`
  (one at a time: a run due while the last one still runs is cancelled).
- `corpus-refresh/ad-hoc`: on demand, with any parameters.
- `train/on-dataset-ready`: started by the `tokenmill.dataset.ready` event of the refreshed dataset.

Environment: TOKENMILL_REFRESH_CRON (default "0 3 * * *"), TOKENMILL_REFRESH_DATASET (default "web").
"""

import os

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.corpus_refresh import corpus_refresh
from flows.ingest import ingest
from flows.train import dataset_ready_trigger, train
from pipeline.dataset import resolve_dataset_uri
from pipeline.settings import ENV_REFRESH_CRON, ENV_REFRESH_DATASET, data_root
from pipeline.storage import join


def deployments() -> list:
    dataset = os.environ.get(ENV_REFRESH_DATASET, "web")
    refresh_defaults = {"params": {"sources": [join(data_root(), "raw", "**")], "dataset": dataset}}
    return [
        ingest.to_deployment(name="ad-hoc", tags=["tokenmill"]),
        corpus_refresh.to_deployment(
            name="scheduled", cron=os.environ.get(ENV_REFRESH_CRON, "0 3 * * *"), parameters=refresh_defaults, tags=["tokenmill"],
            # a refresh still running when the next one is due: the new run is cancelled, not failed on the dataset's lease
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        ),
        corpus_refresh.to_deployment(name="ad-hoc", tags=["tokenmill"]),
        train.to_deployment(name="on-dataset-ready", triggers=[dataset_ready_trigger(resolve_dataset_uri(dataset))], tags=["tokenmill"]),
    ]


if __name__ == "__main__":
    serve(*deployments())
