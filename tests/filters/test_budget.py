"""The per-document CPU budget every step runs under: a document that runs out of it is
dropped as `timeout` and quarantined, the rest of the batch is kept, in order."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.steps.base import Chain, Step
from pipeline.steps.budget import CpuBudget, DocumentTimeout, check_deadline, cpu_deadline
from tests.filters.conftest import docs

CATASTROPHIC = re.compile(r"(a+)+b")  # exponential backtracking on "aaa...a" without a b


class Backtracking(Step):
    """Drops documents that mention 'drop'; documents holding 'HANG' run a regex that would
    take years. Counts documents it looked at, as steps count their tallies."""

    name = "backtracking"

    def annotate(self, table):
        texts = table.column("text").to_pylist()
        for text in texts:
            if "HANG" in text:
                CATASTROPHIC.match("a" * 60)
        self.stats.counters["looked_at"] += len(texts)
        return table, pa.array(["word" if "drop" in t else None for t in texts], pa.string())


class Spinning(Step):
    """A Python loop that checks the deadline, as the steps' own loops do (the only way a
    deadline reaches a step off the main thread)."""

    name = "spinning"

    def annotate(self, table):
        for text in table.column("text").to_pylist():
            while "HANG" in text:
                check_deadline()
        return table, None


def small_budget(step: Step, solo_bytes: int = 1 << 20) -> Step:
    step.budget = CpuBudget(base_s=0.3, per_mb_s=0.0, solo_bytes=solo_bytes)
    return step


def test_a_runaway_regex_is_cut_short_and_quarantined():
    step = small_budget(Backtracking())
    table = docs("first page", "HANG here", "please drop me", "last page")
    start = time.process_time()
    out = step(table)
    assert time.process_time() - start < 10  # the regex alone would run for years
    assert out.column("text").to_pylist() == ["first page", "last page"]
    assert step.stats.dropped == {"timeout": 1, "word": 1}
    assert step.stats.kept + sum(step.stats.dropped.values()) == step.stats.docs_in == 4
    assert step.stats.counters["looked_at"] == 3  # the cut-short batch run is not counted twice
    (record,) = step.quarantined
    assert record["reason"] == "timeout" and record["record_id"] == "1" and record["snippet"] == b"HANG here"
    assert "backtracking" in record["detail"]


def test_chain_reports_the_quarantine_and_later_steps_never_see_it():
    first, second = small_budget(Backtracking()), small_budget(Backtracking())
    chain = Chain([first, second])
    out = chain(docs("HANG", "fine"))
    assert out.column("text").to_pylist() == ["fine"] and second.stats.docs_in == 1
    q = chain.quarantine_table()
    assert q.num_rows == 1 and q.column("reason").to_pylist() == ["timeout"]
    assert chain.dropped() == {"backtracking:timeout": 1}


def test_large_documents_run_alone_under_their_own_budget():
    step = small_budget(Backtracking(), solo_bytes=100)
    big_ok, big_hang = "x" * 500, "HANG" + "x" * 500
    out = step(docs("a", big_ok, "b", big_hang, "c"))
    assert out.column("text").to_pylist() == ["a", big_ok, "b", "c"]
    assert step.stats.dropped == {"timeout": 1}


def test_deadline_off_the_main_thread_is_cooperative():
    step = small_budget(Spinning())
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=step(docs("ok", "HANG", "ok too"))))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert result["out"].column("text").to_pylist() == ["ok", "ok too"]
    assert step.stats.dropped == {"timeout": 1}


def test_deadline_leaves_no_timer_behind():
    with pytest.raises(DocumentTimeout):
        with cpu_deadline(0.05):
            CATASTROPHIC.match("a" * 60)
    with cpu_deadline(5):  # a fresh deadline after a fired one works as usual
        total = int(np.arange(1000).sum())
    spent = time.process_time()
    while time.process_time() - spent < 0.2:  # no stray signal once every block has ended
        total += 1
    assert total > 0


def test_budget_config_is_validated():
    assert CpuBudget.from_config({"base_s": 1, "per_mb_s": 2}).seconds(1_000_000) == 3
    with pytest.raises(ValueError, match=r"\[cpu_budget\].*unknown keys \['seconds'\]"):
        CpuBudget.from_config({"seconds": 3})
    with pytest.raises(ValueError, match="base_s must be > 0"):
        CpuBudget.from_config({"base_s": 0})
