"""The restart policy's decisions, without a job: where a divergence rolls back to, and which
trainer keys a user may not override."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flows.train import TrainParameters, roll_back
from flows.watch import Verdict
from model.checkpoint import META, CheckpointLocation, tag_for


def params_with_checkpoints(tmp_path, steps: list[int]) -> TrainParameters:
    params = TrainParameters(run_name="rb", dataset_uri=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"))
    root = tmp_path / "runs" / "rb" / "checkpoints"
    for step in steps:
        tag = root / tag_for(step)
        (tag / "trainstate").mkdir(parents=True)
        (tag / "trainstate" / "rank0.pt").write_bytes(b"state")
        (tag / META).write_text(json.dumps({"world": 1, "step": step}))
    return params


def diverged(since: int, step: int) -> Verdict:
    return Verdict("diverged", f"loss is nan at step {step}", details={"since_step": since, "step": step})


def test_a_new_divergence_far_past_the_last_one_rolls_back_only_before_its_own_start(tmp_path):
    params = params_with_checkpoints(tmp_path, [50, 100, 150, 200, 4900, 4950])
    latest = CheckpointLocation(params.checkpoints_uri, params.run_dir / "checkpoint-staging")

    overrides, previous, _ = roll_back(params, diverged(since=190, step=200), 1.0, None)
    assert previous == (150, 200) and latest.latest_tag() == tag_for(150) and overrides["data.skip_steps"] == 50

    # The run went on from 150 past 200 and diverged again near the end: new trouble.
    overrides, previous, message = roll_back(params, diverged(since=4980, step=4990), overrides["train.lr_scale"], previous)
    assert previous == (4950, 4990) and latest.latest_tag() == tag_for(4950), message
    assert overrides["data.skip_steps"] == 40 and overrides["train.lr_scale"] == 0.25


def test_a_divergence_again_before_the_last_detection_goes_back_past_the_rollback_point(tmp_path):
    params = params_with_checkpoints(tmp_path, [50, 100, 150, 200])
    _, previous, _ = roll_back(params, diverged(since=190, step=200), 1.0, None)
    # Resumed at 150 and diverged again at 170, before step 200: the step-150 state is suspect.
    overrides, previous, _ = roll_back(params, diverged(since=160, step=170), 0.5, previous)
    assert previous == (100, 170) and overrides["data.skip_steps"] == 70


@pytest.mark.parametrize(
    ("key", "field"),
    [("run_dir", "runs_dir"), ("checkpoint.uri", "checkpoint_uri"), ("train.steps", "steps"), ("train", "steps"),
     ("data.skip_steps", "dataset_uri"), ("train.stop_after", "steps"), ("deepspeed.zero_optimization", "ds_config")],  # fmt: skip
)
def test_overrides_of_keys_the_flow_sets_are_refused_naming_the_field(tmp_path, key, field):
    with pytest.raises(ValidationError) as raised:
        TrainParameters(run_name="o", dataset_uri=str(tmp_path), trainer_overrides={key: 1})
    assert "trainer_overrides" in str(raised.value) and repr(key) in str(raised.value) and field in str(raised.value)


def test_overrides_of_other_trainer_keys_pass(tmp_path):
    overrides = {"train.weight_decay": 0.0, "model.n_layers": 2, "health.window": 10, "dist.timeout_s": 60}
    assert TrainParameters(run_name="o", dataset_uri=str(tmp_path), trainer_overrides=overrides).trainer_overrides == overrides
