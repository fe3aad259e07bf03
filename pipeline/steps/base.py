"""The step contract: one job per step, counted the same way everywhere.

A step sees an Arrow table of documents (DOCUMENT_SCHEMA columns plus any score columns
earlier steps added) and returns the table it annotated or rewrote together with a drop
reason per row (null = keep). The base class applies the drops and keeps the books:
documents and bytes in, kept, dropped per reason, seconds spent.

Every step runs under a CPU budget (`budget.CpuBudget`), so one hostile page never stalls a
task. A batch is cut into runs of ordinary documents and documents over `solo_bytes`, in
their order. A run of ordinary documents is annotated as one vectorised batch under the
budget of its total size; if that runs out, the run is annotated again one document at a
time, each under its own budget. A large document always runs alone. A document that runs out of
its own budget is dropped with the reason `timeout` (counted like every other reason) and
recorded in `Step.quarantined` (QUARANTINE_SCHEMA rows: its id, source and first bytes).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import QUARANTINE_SCHEMA, quarantine_row
from pipeline.steps.budget import CpuBudget, DocumentTimeout, cpu_deadline


@dataclass
class StepStats:
    name: str
    docs_in: int = 0
    bytes_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    counters: Counter = field(default_factory=Counter)  # step-specific tallies, e.g. PII replacements per type
    # files the step read (model, training data, word list): "<what>" -> "<path> sha256:<hex>"
    files: dict = field(default_factory=dict)

    def merge(self, other: "StepStats") -> None:
        self.docs_in += other.docs_in
        self.bytes_in += other.bytes_in
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.seconds += other.seconds
        self.counters.update(other.counters)
        self.files.update(other.files)

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 4),
            "counters": dict(sorted(self.counters.items())),
        }
        if self.files:
            out["files"] = dict(sorted(self.files.items()))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "StepStats":
        return cls(d["name"], d["docs_in"], d["bytes_in"], d["kept"], Counter(d["dropped"]), d["seconds"], Counter(d.get("counters", {})),
                   dict(d.get("files", {})))


class Step(ABC):
    """Subclasses set `name` and implement `annotate`."""

    name: str = "step"
    budget: CpuBudget = CpuBudget()

    def __init__(self) -> None:
        self.stats = StepStats(self.name)
        self.quarantined: list[dict] = []  # QUARANTINE_SCHEMA rows of documents given up (timeout)

    @abstractmethod
    def annotate(self, table: pa.Table) -> tuple[pa.Table, pa.Array | pa.ChunkedArray | None]:
        """Return (table, drop_reason): the table with this step's columns added or text
        rewritten, and a string array with the reason to drop each row, null to keep it
        (None keeps every row). Step-specific tallies go to `self.stats.counters` only after
        the work is done: a run cut short by its deadline is annotated again."""

    def __call__(self, table: pa.Table) -> pa.Table:
        start = time.perf_counter()
        self.stats.docs_in += table.num_rows
        if table.num_rows == 0:
            return table
        sizes = np.asarray(pc.fill_null(pc.binary_length(table.column("text")), 0), dtype=np.int64)
        self.stats.bytes_in += int(sizes.sum())
        kept: list[pa.Table] = []
        for lo, hi in _runs(sizes > self.budget.solo_bytes):
            part = table.slice(lo, hi - lo)
            try:
                kept.append(self._within(part, self.budget.seconds(int(sizes[lo:hi].sum()))))
            except DocumentTimeout:
                if hi - lo == 1:
                    self._give_up(part)
                    continue
                for row in range(lo, hi):
                    one = table.slice(row, 1)
                    try:
                        kept.append(self._within(one, self.budget.seconds(int(sizes[row]))))
                    except DocumentTimeout:
                        self._give_up(one)
        kept = [t for t in kept if t.num_rows] or kept[:1]
        out = pa.concat_tables(kept, promote_options="permissive") if len(kept) > 1 else (kept[0] if kept else table.slice(0, 0))
        self.stats.kept += out.num_rows
        self.stats.seconds += time.perf_counter() - start
        return out

    def _within(self, table: pa.Table, seconds: float) -> pa.Table:
        """Annotate under a CPU deadline; count the drops only once the work is complete."""
        counters = Counter(self.stats.counters)
        try:
            with cpu_deadline(seconds):
                out, reasons = self.annotate(table)
        except DocumentTimeout:
            self.stats.counters = counters  # what the cut-short run tallied is counted by its re-run
            raise
        if reasons is not None and len(reasons):
            dropped = pc.drop_null(reasons)
            if len(dropped):
                vc = pc.value_counts(dropped)
                self.stats.dropped.update({v["values"].as_py(): v["counts"].as_py() for v in vc})
                out = out.filter(pc.is_null(reasons))
        return out

    def _give_up(self, one: pa.Table) -> None:
        self.stats.dropped["timeout"] += 1
        row = one.select(["id", "source", "text"]).to_pylist()[0]
        seconds = self.budget.seconds(len((row["text"] or "").encode()))
        self.quarantined.append(quarantine_row(
            row["source"], None, "timeout", f"step {self.name}: more than {seconds:.1f} CPU-s on one document", row["id"],
            (row["text"] or "").encode()[:256]))


def _runs(solo: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) row ranges in order: each solo row alone, the rows between them together."""
    runs, lo = [], 0
    for row in np.flatnonzero(solo).tolist():
        if row > lo:
            runs.append((lo, row))
        runs.append((row, row + 1))
        lo = row + 1
    if lo < len(solo):
        runs.append((lo, len(solo)))
    return runs


class Chain:
    """Steps run in order over each table; stats per step and for the whole chain."""

    def __init__(self, steps: Iterable[Step]):
        self.steps = list(steps)

    def __call__(self, table: pa.Table) -> pa.Table:
        for step in self.steps:
            if table.num_rows == 0:
                break
            table = step(table)
        return table

    def stats(self) -> list[StepStats]:
        return [step.stats for step in self.steps]

    def dropped(self) -> Counter:
        """All drops of the chain as `step:reason` -> count."""
        return dropped_by_rule(self.stats())

    def quarantine_table(self) -> pa.Table:
        """Documents the steps gave up on (reason `timeout`), as QUARANTINE_SCHEMA rows."""
        return pa.Table.from_pylist([row for step in self.steps for row in step.quarantined], schema=QUARANTINE_SCHEMA)


def dropped_by_rule(stats: Iterable[StepStats | dict]) -> Counter:
    """Drops as `step:reason` -> count, from live stats or their `as_dict()` form."""
    total: Counter = Counter()
    for s in stats:
        d = s.as_dict() if isinstance(s, StepStats) else s
        total.update({f"{d['name']}:{reason}": n for reason, n in d["dropped"].items()})
    return total
