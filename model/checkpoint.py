"""Training state and where checkpoints live.

A checkpoint is DeepSpeed's layout (`<root>/<tag>/...` plus a `latest` file naming the newest
tag: model, optimizer and LR scheduler state) with two additions inside the tag folder:

- `trainstate/rank<N>.pt`: that rank's `TrainState` (step, tokens seen, data position, RNG).
- `tokenmill.json` and `tokenizer.json`: model config and tokenizer, so that export needs
  nothing but the checkpoint.

The root is a local folder or an object storage URI. For object storage, DeepSpeed writes to a
local staging folder, the first rank of each node uploads what its node wrote, and rank 0
uploads `latest` last, after every file is in place: a reader that follows `latest` never
finds half a checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.storage import ObjectStore, is_s3, join, local_path

LATEST = "latest"
META = "tokenmill.json"


@dataclass
class TrainState:
    """Everything the training loop itself owns, besides model/optimizer/scheduler (DeepSpeed's)."""

    step: int = 0
    tokens_seen: int = 0
    data: dict = field(default_factory=dict)
    last_val_loss: float | None = None

    def state_dict(self) -> dict:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {**asdict(self), "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        rng = state.pop("rng")
        for key, value in state.items():
            setattr(self, key, value)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def tag_for(step: int) -> str:
    return f"global_step{step}"


class CheckpointLocation:
    """A checkpoint root (local folder or s3:// URI) and the local folder DeepSpeed uses for it."""

    def __init__(self, uri: str, staging_dir: str | Path, store: ObjectStore | None = None):
        self.uri = uri.rstrip("/")
        self.remote = is_s3(self.uri)
        self.local_dir = Path(staging_dir) if self.remote else local_path(self.uri)
        self.store = store or ObjectStore()

    def tag_uri(self, tag: str) -> str:
        return join(self.uri, tag)

    def latest_tag(self) -> str | None:
        uri = join(self.uri, LATEST)
        if not self.store.exists(uri):
            return None
        return self.store.get_bytes(uri).decode().strip()

    def state_path(self, tag: str, rank: int) -> Path:
        return self.local_dir / tag / "trainstate" / f"rank{rank}.pt"

    def save_train_state(self, tag: str, rank: int, state: TrainState) -> None:
        path = self.state_path(tag, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state.state_dict(), path)

    def load_train_state(self, tag: str, rank: int, state: TrainState) -> None:
        path = self.state_path(tag, rank)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {tag} has no training state for rank {rank} (was it saved with a different number of ranks?)")
        state.load_state_dict(torch.load(path, weights_only=False))

    def write_meta(self, tag: str, meta: dict, tokenizer_json: bytes) -> None:
        folder = self.local_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text(json.dumps(meta, indent=1))
        (folder / "tokenizer.json").write_bytes(tokenizer_json)

    def upload(self, tag: str) -> None:
        """Node leader: upload every file of `tag` that this node wrote."""
        if not self.remote:
            return
        folder = self.local_dir / tag
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.store.upload_file(path, join(self.uri, tag, path.relative_to(folder).as_posix()))

    def publish(self, tag: str) -> None:
        """Rank 0, after every node uploaded: point `latest` at the tag."""
        if self.remote:
            self.store.put_bytes(join(self.uri, LATEST), tag.encode())

    def download(self, tag: str) -> Path:
        """Node leader: fetch a tag into the staging folder (no-op for a local root)."""
        if self.remote:
            fetch_checkpoint(self.store, self.tag_uri(tag), self.local_dir / tag)
            (self.local_dir / LATEST).write_text(tag)
        return self.local_dir


def fetch_checkpoint(store: ObjectStore, tag_uri: str, dest: Path) -> Path:
    prefix = tag_uri.rstrip("/") + "/"
    objects = store.list(prefix)
    if not objects:
        raise FileNotFoundError(f"no checkpoint at {tag_uri}")
    for obj in objects:
        store.download_file(obj.uri, dest / obj.uri[len(prefix) :])
    return dest


def resolve_tag_dir(checkpoint: str, store: ObjectStore | None = None, staging: Path | None = None) -> Path:
    """A checkpoint root (with `latest`) or one tag folder, local or s3:// → a local tag folder."""
    store = store or ObjectStore()
    root = checkpoint.rstrip("/")
    if store.exists(join(root, LATEST)):
        root = join(root, store.get_bytes(join(root, LATEST)).decode().strip())
    if not store.exists(join(root, META)):
        raise FileNotFoundError(f"{checkpoint} is not a tokenmill checkpoint (no {LATEST} or {META})")
    if is_s3(root):
        if staging is None:
            raise ValueError("a staging folder is needed to read a checkpoint from object storage")
        return fetch_checkpoint(store, root, staging / root.rsplit("/", 1)[-1])
    return local_path(root)
