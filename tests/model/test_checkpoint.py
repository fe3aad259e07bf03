"""Checkpoint locations without a training run: what is read back from storage is untrusted
(tags, object keys, pickles), and a tag a rank died in is never resumed from."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from model.checkpoint import LATEST, META, CheckpointLocation, TrainState, confined, fetch_checkpoint, resolve_tag_dir
from pipeline.names import InvalidName


def write_tag(location: CheckpointLocation, step: int, *, world: int = 2, complete: bool = True) -> str:
    tag = f"global_step{step}"
    for rank in range(world):
        location.save_train_state(tag, rank, TrainState(step=step))
    if complete:
        location.commit(tag, {"step": step, "world": world})
    return tag


def test_resume_falls_back_from_an_incomplete_latest_and_says_why(tmp_path):
    location = CheckpointLocation(str(tmp_path / "ckpt"), tmp_path / "staging")
    assert location.resume_tag() == (None, None)
    write_tag(location, 4)
    write_tag(location, 8)
    assert location.resume_tag() == ("global_step8", None)
    # What an older trainer left when rank 1 died inside the save of step 12: DeepSpeed's
    # `latest` already named the tag, rank 1's training state never came.
    location.save_train_state("global_step12", 0, TrainState(step=12))
    (tmp_path / "ckpt" / "global_step12" / META).write_text(json.dumps({"step": 12, "world": 2}))
    (tmp_path / "ckpt" / LATEST).write_text("global_step12")
    tag, note = location.resume_tag()
    assert tag == "global_step8" and "global_step12" in note and "no training state for rank 1 of 2" in note
    # A tag without its commit marker is not listed as complete at all.
    write_tag(location, 16, complete=False)
    assert location.tags() == ["global_step4", "global_step8", "global_step12"]
    location.set_latest(None)
    assert location.resume_tag() == (None, None)
    with pytest.raises(FileNotFoundError, match="no tokenmill.json"):
        location.set_latest("global_step16")


def test_latest_contents_and_object_keys_never_leave_the_checkpoint(tmp_path, store, bucket):
    root = f"{bucket}/ckpt"
    store.put_bytes(f"{root}/{LATEST}", b"../../../escaped")
    with pytest.raises(InvalidName, match="checkpoint tag"):
        CheckpointLocation(root, tmp_path / "staging", store).latest_tag()
    with pytest.raises(InvalidName, match="checkpoint tag"):
        resolve_tag_dir(root, store, staging=tmp_path / "staging")
    # AWS S3 accepts keys with `..` segments (this SeaweedFS refuses to store them, so the
    # hostile keys go to the function that every download passes through).
    dest = tmp_path / "deep" / "dest"
    for key in ("../../../../outside.txt", "a/../../x", "/etc/passwd", "a//b", "./x", "", "a\\..\\..\\x"):
        with pytest.raises(InvalidName):
            confined(dest, key)
    assert confined(dest, "zero/mp_rank_00_model_states.pt") == (dest / "zero" / "mp_rank_00_model_states.pt").resolve()
    store.put_bytes(f"{root}/global_step1/zero/ok.pt", b"x")
    assert (fetch_checkpoint(store, f"{root}/global_step1", dest) / "zero" / "ok.pt").read_bytes() == b"x"


def test_train_state_round_trips_under_weights_only_and_refuses_code(tmp_path):
    location = CheckpointLocation(str(tmp_path / "ckpt"), tmp_path / "staging")
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = TrainState(step=7, tokens_seen=700, data={"epoch": 1, "offset": 5}, last_loss=2.5, lr_scale=0.5)
    location.save_train_state("global_step7", 0, state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = TrainState()
    location.load_train_state("global_step7", 0, loaded)
    assert (loaded.step, loaded.data, loaded.last_loss, loaded.lr_scale) == (7, {"epoch": 1, "offset": 5}, 2.5, 0.5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # every RNG continues exactly

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    path = location.state_path("global_step8", 0)
    path.parent.mkdir(parents=True)
    torch.save({"step": 8, "rng": Payload()}, path, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        location.load_train_state("global_step8", 0, TrainState())
    assert not marker.exists()
