"""The run directory's signals, which job watchers rely on (see model/configs/README.md):

- `<run_dir>/metrics.jsonl`: rank 0 appends one JSON object per training step and per
  validation, flushed at once.
- `<run_dir>/heartbeat/rank<N>`: every rank touches its file every step; the mtime is the
  signal (a hung rank stops touching it).
- `<run_dir>/COMPLETED.json`: rank 0 writes it as the very last act of a successful run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _clean(value):
    """JSON has no NaN/inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunMonitor:
    def __init__(self, run_dir: str | Path, rank: int, *, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.heartbeat_path = self.run_dir / "heartbeat" / f"rank{rank}"
        self.heartbeat_path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") if rank == 0 else None
        self._tb = None
        if tensorboard and rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.heartbeat()

    def heartbeat(self) -> None:
        self.heartbeat_path.touch()
        os.utime(self.heartbeat_path)

    def log(self, record: dict) -> None:
        """Rank 0 only: one JSON line (and TensorBoard scalars under the same names)."""
        if self._metrics is None:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def completed(self, record: dict) -> None:
        """Rank 0: write COMPLETED.json atomically (a watcher never sees half a file)."""
        if self.rank != 0:
            return
        tmp = self.run_dir / ".COMPLETED.json.tmp"
        tmp.write_text(json.dumps({k: _clean(v) for k, v in record.items()}, indent=1))
        os.replace(tmp, self.run_dir / "COMPLETED.json")

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()
