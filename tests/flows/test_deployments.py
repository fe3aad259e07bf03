"""The deployments `tokenmill up` serves and the ones `prefect.yaml` registers for workers agree,
and `prefect.yaml` is valid for Prefect's own loader (no server needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_loads_with_prefects_model():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    assert {d.name for d in model.deployments} >= {"ad-hoc", "scheduled", "on-dataset-ready"}


def test_scheduled_refresh_runs_one_at_a_time_in_both():
    from flows.serve import deployments

    served = {d.name: d for d in deployments() if d.name == "scheduled"}["scheduled"]
    assert served.concurrency_limit == 1 and served.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    listed = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == "scheduled")
    assert listed["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    served_names = {(d.entrypoint or "").split(":")[-1] + "/" + d.name for d in deployments()}
    assert {"corpus_refresh/scheduled", "corpus_refresh/ad-hoc", "ingest/ad-hoc", "train/on-dataset-ready"} <= served_names
