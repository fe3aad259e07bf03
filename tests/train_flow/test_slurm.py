"""Slurm backend against a real single-node cluster (munged + slurmctld + slurmd)."""

from __future__ import annotations

import json

import pytest

from flows.train import TrainParameters
from infra.backends import Phase, make_backend
from tests.train_flow.conftest import job_env_processes
from tests.train_flow.test_backends import spec_for, wait_for
from tests.train_flow.test_train_flow import TINY, read_artifact

pytestmark = pytest.mark.slurm


def test_scancel_stops_every_rank(slurm_cluster, tmp_path):
    backend = make_backend("slurm", slurm_conf=str(slurm_cluster.conf))
    handle = backend.submit(spec_for(tmp_path, "sleep", "sleepy"))
    marker = f"slurm-{handle.job_id}"
    wait_for(lambda: backend.status(handle).phase == Phase.RUNNING and len(job_env_processes(marker)) >= 2)
    backend.cancel(handle)
    assert backend.status(handle).phase == Phase.CANCELLED
    wait_for(lambda: job_env_processes(marker) == [], timeout_s=30)


@pytest.mark.slow
def test_sweep_of_training_flows_on_slurm(slurm_cluster, prefect_harness, corpus, bucket, runs_dir):
    """Two trials, each a `train` subflow whose DeepSpeed job runs through sbatch + srun +
    torchrun; the sweep picks the one with the lower validation loss. (One rank per trial keeps
    the test short; the local end-to-end test covers two ranks.)"""
    from flows.sweep import SweepParameters, sweep

    base = TrainParameters(
        run_name="sw",
        dataset_uri=corpus,
        steps=3,
        backend="slurm",
        backend_options={"slurm_conf": str(slurm_cluster.conf)},
        max_restarts=0,
        resources={"procs_per_node": 1, "cpus_per_node": 1},
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/sw",
        **{**TINY, "eval_every": 3},
    )
    # A learning rate of 1e-7 leaves the random model where it is; 3e-3 learns in 3 steps.
    result = sweep(params=SweepParameters(base=base, lr=[1e-7, 3e-3], warmup_steps=[0], micro_batch_size=[4]))
    rows = result["trials"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[1]["val_loss"] < rows[0]["val_loss"]
    assert result["best"]["trial"] == "sw-t01" and result["best"]["lr"] == 3e-3
    assert rows[0]["report"] == f"{bucket}/runs/sw/sw-t00/report.md"

    run_dir = runs_dir / "sw-t01"
    completion = json.loads((run_dir / "COMPLETED.json").read_text())
    assert completion["step"] == 3 and completion["checkpoint"].endswith("global_step3")
    script = (run_dir / "sw-t01-a0.sbatch").read_text()
    assert "srun" in script and "torch.distributed.run" in script and "--nproc_per_node 1" in script and "--cpus-per-task=1" in script
    assert job_env_processes("slurm-") == []
    table = read_artifact("sw-sweep")
    assert table is not None and [r["trial"] for r in json.loads(table["data"])] == ["sw-t00", "sw-t01"]
