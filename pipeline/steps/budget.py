"""CPU deadlines for one step's work on a batch or one document.

A deadline is a number of CPU seconds; crossing it raises `DocumentTimeout` inside the
running step, so no input, however hostile, holds a task for longer than its budget.

Two ways of raising it, because a Python thread cannot be stopped from outside:
- on the main thread (process-pool workers, the CLI, tests) a `SIGPROF` interval timer fires
  when the process has spent the seconds; its handler raises at the next bytecode, and the
  `re` engine checks for signals while it matches, so a runaway regex is cut short too;
- on any other thread (a Dask worker's) the step's own Python loops call `check_deadline()`,
  which compares that thread's CPU time with the deadline.
C++ kernels (Arrow compute, fastText) are not interruptible mid-call; the steps use only
linear-time kernels there (bench/adversarial.py measures it), so they end within a bounded
factor of their ordinary cost, and the deadline takes effect when they return.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


class DocumentTimeout(BaseException):
    """A step spent its CPU budget. A BaseException, like KeyboardInterrupt, so a step's own
    `except Exception` (a validator, a parser) does not swallow it."""


@dataclass(frozen=True)
class CpuBudget:
    """CPU seconds a step may spend on a piece of work: `base_s + per_mb_s * megabytes`.

    Documents over `solo_bytes` run alone, each under its own budget; the others run as one
    vectorised batch under the batch's budget, and if that runs out they run again one by
    one, so only the document that needs more than its share is given up (`timeout`). With
    every step at worst ~10x its ordinary CPU per MB (0.03-0.2 s/MB on web pages) the
    defaults never fire on real text."""

    base_s: float = 2.0
    per_mb_s: float = 5.0
    solo_bytes: int = 1 << 20

    def seconds(self, nbytes: int) -> float:
        return self.base_s + self.per_mb_s * nbytes / 1e6

    @classmethod
    def from_config(cls, section: dict | None) -> "CpuBudget":
        section = dict(section or {})
        unknown = sorted(set(section) - {"base_s", "per_mb_s", "solo_bytes"})
        if unknown:
            raise ValueError(f"filter config [cpu_budget]: unknown keys {unknown}; known: base_s, per_mb_s, solo_bytes")
        budget = cls(**section)
        if budget.base_s <= 0 or budget.per_mb_s < 0 or budget.solo_bytes < 0:
            raise ValueError(f"filter config [cpu_budget]: base_s must be > 0, per_mb_s and solo_bytes >= 0, got {section}")
        return budget


_state = threading.local()


def check_deadline() -> None:
    """Raise DocumentTimeout if the running deadline on this thread has passed (a no-op
    without one). Cheap: call it once per unit of work in a step's Python loops."""
    limit = getattr(_state, "limit", None)
    if limit is not None and time.thread_time() > limit:
        raise DocumentTimeout()


def _on_timer(signum, frame) -> None:
    # a signal that lands once the block is closing (or closed) is ignored
    if getattr(_state, "limit", None) is not None and not getattr(_state, "closing", False):
        raise DocumentTimeout()


@contextmanager
def cpu_deadline(seconds: float) -> Iterator[None]:
    """Run the block under a CPU deadline of `seconds` (nested deadlines: the inner one is
    checked cooperatively only)."""
    if getattr(_state, "limit", None) is not None:
        outer = _state.limit
        _state.limit = min(outer, time.thread_time() + seconds)
        try:
            yield
        finally:
            _state.limit = outer
        return
    use_timer = threading.current_thread() is threading.main_thread()
    previous = None
    if use_timer:
        previous = signal.signal(signal.SIGPROF, _on_timer)
    _state.limit = time.thread_time() + seconds
    try:
        if use_timer:
            signal.setitimer(signal.ITIMER_PROF, seconds)
        yield
    finally:
        # the one-shot timer raises at most once: if it lands before `closing` is set, the
        # inner block still cleans up; after that the handler ignores it
        try:
            _state.closing = True
            if use_timer:
                signal.setitimer(signal.ITIMER_PROF, 0)
        finally:
            _state.limit = None
            _state.closing = False
            if use_timer:
                signal.signal(signal.SIGPROF, previous)
