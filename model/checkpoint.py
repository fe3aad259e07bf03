"""Training state and where checkpoints live.

A checkpoint is DeepSpeed's layout (`<root>/<tag>/...` plus a `latest` file naming the newest
tag: model, optimizer and LR scheduler state) with two additions inside the tag folder:

- `trainstate/rank<N>.pt`: that rank's `TrainState` (step, tokens seen, data position, RNG).
- `tokenmill.json` and `tokenizer.json`: model config and tokenizer, so that export needs
  nothing but the checkpoint.

The root is a local folder or an object storage URI. For object storage, DeepSpeed writes to a
local staging folder and the first rank of each node uploads what its node wrote.

Commit order, the same for both: every rank's files, then (after a barrier) `tokenmill.json`,
then `latest`. So `tokenmill.json` marks a complete tag, and a reader that follows `latest`
never finds half a checkpoint. A rank that dies while saving leaves a tag without
`tokenmill.json` and `latest` still naming the previous tag; `resume_tag` also falls back to
the newest complete tag when `latest` names an incomplete one (a checkpoint written by an
older tokenmill, which published `latest` first), and says why.

Everything read back is untrusted: tags are validated as path segments, downloads are
confined to their destination folder, and `torch.load` runs with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.names import InvalidName, segment
from pipeline.storage import ObjectStore, is_s3, join, local_path

LATEST = "latest"
META = "tokenmill.json"
TAG_PATTERN = re.compile(r"global_step(\d+)")


@contextlib.contextmanager
def safe_torch_load():
    """Every `torch.load` inside (ours and DeepSpeed's, which passes weights_only=False) runs
    with weights_only=True: only tensors, containers and the few DeepSpeed classes a ZeRO
    checkpoint holds can be unpickled, never arbitrary code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


@dataclass
class TrainState:
    """Everything the training loop itself owns, besides model/optimizer/scheduler (DeepSpeed's)."""

    step: int = 0
    tokens_seen: int = 0
    data: dict = field(default_factory=dict)
    last_val_loss: float | None = None
    last_loss: float | None = None
    lr_scale: float = 1.0  # lowered by a restart after a divergence; kept by every later resume

    def state_dict(self) -> dict:
        """Plain containers, ints and tensors only, so that it loads with weights_only=True."""
        np_state = np.random.get_state(legacy=False)
        rng = {
            "python": random.getstate(),
            "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"]}},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {**asdict(self), "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        rng = state.pop("rng")
        for key, value in state.items():
            setattr(self, key, value)
        random.setstate(rng["python"])
        np_state = rng["numpy"]
        np.random.set_state({**np_state, "state": {"key": np_state["state"]["key"].numpy().astype(np.uint32), "pos": np_state["state"]["pos"]}})
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> int | None:
    match = TAG_PATTERN.fullmatch(tag)
    return int(match.group(1)) if match else None


def checked_tag(value: str, where: str) -> str:
    """A tag read from storage (a `latest` file, a listing) before it becomes part of a path."""
    return segment(value.strip(), f"checkpoint tag in {where}")


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
        return checked_tag(self.store.get_bytes(uri).decode(), uri)

    def read_meta(self, tag: str) -> dict | None:
        uri = join(self.uri, tag, META)
        return json.loads(self.store.get_bytes(uri)) if self.store.exists(uri) else None

    def tags(self) -> list[str]:
        """Tags under the root that hold a `tokenmill.json` (complete ones), oldest first."""
        if self.remote:
            prefix = self.uri + "/"
            names = {o.uri[len(prefix) :].split("/")[0] for o in self.store.list(prefix) if o.uri.endswith("/" + META)}
        else:
            names = {p.parent.name for p in self.local_dir.glob(f"*/{META}")} if self.local_dir.exists() else set()
        return sorted((n for n in names if step_of(n) is not None), key=step_of)

    def incomplete_reason(self, tag: str) -> str | None:
        """Why `tag` cannot be resumed from, or None when it is complete."""
        meta = self.read_meta(tag)
        if meta is None:
            return f"{tag} has no {META} (a rank died while it was being saved)"
        for rank in range(int(meta.get("world", 1))):
            uri = join(self.uri, tag, "trainstate", f"rank{rank}.pt")
            if not self.store.exists(uri):
                return f"{tag} has no training state for rank {rank} of {meta.get('world')}"
        return None

    def resume_tag(self) -> tuple[str | None, str | None]:
        """(tag to resume from, a note for the log or None): `latest`, or the newest complete
        tag before it when `latest` names an incomplete one."""
        latest = self.latest_tag()
        if latest is None:
            return None, None
        reason = self.incomplete_reason(latest)
        if reason is None:
            return latest, None
        latest_step = step_of(latest)
        older = [t for t in self.tags() if latest_step is None or step_of(t) < latest_step]
        for tag in reversed(older):
            if self.incomplete_reason(tag) is None:
                return tag, f"checkpoint `latest` names {latest}, which is incomplete ({reason}); resuming from {tag}, the newest complete checkpoint"
        raise FileNotFoundError(f"checkpoint `latest` names {latest}, which is incomplete ({reason}), and no earlier complete checkpoint exists under {self.uri}")

    def set_latest(self, tag: str | None) -> None:
        """Point `latest` at a complete tag, or remove it (None: the next launch starts from
        step 0). A rollback after a divergence abandons the newer tags this way; they are
        overwritten when the new branch reaches their steps (`clear`)."""
        uri = join(self.uri, LATEST)
        if tag is None:
            self.store.delete(uri)
            return
        reason = self.incomplete_reason(checked_tag(tag, "set_latest"))
        if reason:
            raise FileNotFoundError(f"cannot point {uri} at {tag}: {reason}")
        if self.remote:
            self.store.put_bytes(uri, tag.encode())
        else:
            _write_atomic(self.local_dir / LATEST, tag.encode())

    def state_path(self, tag: str, rank: int) -> Path:
        return self.local_dir / tag / "trainstate" / f"rank{rank}.pt"

    def clear(self, tag: str, *, remote: bool) -> None:
        """Before saving `tag`, remove what an earlier (crashed or abandoned) save of it left, so
        that no file of another run branch survives in the new tag: the local folder (rank 0,
        or each node leader for staging folders) and, with `remote`, the stored objects (rank 0)."""
        shutil.rmtree(self.local_dir / tag, ignore_errors=True)
        if remote and self.remote:
            self.store.delete_prefix(self.tag_uri(tag) + "/")

    def save_train_state(self, tag: str, rank: int, state: TrainState) -> None:
        path = self.state_path(tag, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state.state_dict(), path)

    def load_train_state(self, tag: str, rank: int, state: TrainState) -> None:
        path = self.state_path(tag, rank)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {tag} has no training state for rank {rank} (was it saved with a different number of ranks?)")
        with safe_torch_load():
            state.load_state_dict(torch.load(path, weights_only=True))

    def write_tokenizer(self, tag: str, tokenizer_json: bytes) -> None:
        folder = self.local_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.json").write_bytes(tokenizer_json)

    def upload(self, tag: str) -> None:
        """Node leader: upload every file of `tag` that this node wrote (not the commit marker)."""
        if not self.remote:
            return
        folder = self.local_dir / tag
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META):
            self.store.upload_file(path, join(self.uri, tag, path.relative_to(folder).as_posix()))

    def commit(self, tag: str, meta: dict) -> None:
        """Rank 0, after every rank's files are in place: write `tokenmill.json` (the tag is
        complete), then point `latest` at the tag."""
        folder = self.local_dir / tag
        _write_atomic(folder / META, json.dumps(meta, indent=1).encode())
        if self.remote:
            self.store.upload_file(folder / META, join(self.uri, tag, META))
        self.set_latest(tag)

    def download(self, tag: str) -> Path:
        """Node leader: fetch a tag into the staging folder (no-op for a local root)."""
        if self.remote:
            fetch_checkpoint(self.store, self.tag_uri(tag), self.local_dir / tag)
        return self.local_dir


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def confined(dest: Path, relative: str) -> Path:
    """`dest / relative`, refusing keys that would land outside `dest` (`../`, absolute
    paths, empty segments: all legal in S3 keys)."""
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") for p in parts) or "\\" in relative or "\0" in relative:
        raise InvalidName(f"checkpoint object key {relative!r}: not a plain relative path; refusing to download it")
    target = (dest / relative).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise InvalidName(f"checkpoint object key {relative!r} leads outside {dest}")
    return target


def fetch_checkpoint(store: ObjectStore, tag_uri: str, dest: Path) -> Path:
    prefix = tag_uri.rstrip("/") + "/"
    objects = store.list(prefix)
    if not objects:
        raise FileNotFoundError(f"no checkpoint at {tag_uri}")
    dest.mkdir(parents=True, exist_ok=True)
    targets = [(obj.uri, confined(dest, obj.uri[len(prefix) :])) for obj in objects]  # all checked before any write
    for uri, target in targets:
        store.download_file(uri, target)
    return dest


def resolve_tag_dir(checkpoint: str, store: ObjectStore | None = None, staging: Path | None = None) -> Path:
    """A checkpoint root (with `latest`) or one tag folder, local or s3:// → a local tag folder."""
    store = store or ObjectStore()
    root = checkpoint.rstrip("/")
    if store.exists(join(root, LATEST)):
        root = join(root, checked_tag(store.get_bytes(join(root, LATEST)).decode(), join(root, LATEST)))
    if not store.exists(join(root, META)):
        raise FileNotFoundError(f"{checkpoint} is not a tokenmill checkpoint (no {LATEST} or {META})")
    if is_s3(root):
        if staging is None:
            raise ValueError("a staging folder is needed to read a checkpoint from object storage")
        return fetch_checkpoint(store, root, staging / root.rsplit("/", 1)[-1])
    return local_path(root)
