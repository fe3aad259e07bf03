"""The step contract: one job per step, counted the same way everywhere.

A step sees an Arrow table of documents (DOCUMENT_SCHEMA columns plus any score columns
earlier steps added) and returns the table it annotated or rewrote together with a drop
reason per row (null = keep). The base class applies the drops and keeps the books:
documents and bytes in, kept, dropped per reason, seconds spent.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class StepStats:
    name: str
    docs_in: int = 0
    bytes_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    counters: Counter = field(default_factory=Counter)  # step-specific tallies, e.g. PII replacements per type

    def merge(self, other: "StepStats") -> None:
        self.docs_in += other.docs_in
        self.bytes_in += other.bytes_in
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.seconds += other.seconds
        self.counters.update(other.counters)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 4),
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StepStats":
        return cls(d["name"], d["docs_in"], d["bytes_in"], d["kept"], Counter(d["dropped"]), d["seconds"], Counter(d.get("counters", {})))


class Step(ABC):
    """Subclasses set `name` and implement `annotate`."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    @abstractmethod
    def annotate(self, table: pa.Table) -> tuple[pa.Table, pa.Array | pa.ChunkedArray | None]:
        """Return (table, drop_reason): the table with this step's columns added or text
        rewritten, and a string array with the reason to drop each row, null to keep it
        (None keeps every row)."""

    def __call__(self, table: pa.Table) -> pa.Table:
        start = time.perf_counter()
        self.stats.docs_in += table.num_rows
        if table.num_rows:
            self.stats.bytes_in += pc.sum(pc.binary_length(table.column("text"))).as_py() or 0
        out, reasons = self.annotate(table)
        if reasons is not None and len(reasons):
            keep = pc.is_null(reasons)
            dropped = pc.drop_null(reasons)
            if len(dropped):
                vc = pc.value_counts(dropped)
                self.stats.dropped.update({v["values"].as_py(): v["counts"].as_py() for v in vc})
                out = out.filter(keep)
        self.stats.kept += out.num_rows
        self.stats.seconds += time.perf_counter() - start
        return out


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


def dropped_by_rule(stats: Iterable[StepStats | dict]) -> Counter:
    """Drops as `step:reason` -> count, from live stats or their `as_dict()` form."""
    total: Counter = Counter()
    for s in stats:
        d = s.as_dict() if isinstance(s, StepStats) else s
        total.update({f"{d['name']}:{reason}": n for reason, n in d["dropped"].items()})
    return total
