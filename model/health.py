"""Is training still healthy? Rank 0's view of the loss curve, step by step.

A run can explode without a NaN: with a too-high learning rate DeepSpeed skips every
optimizer step on overflowing gradients ("OVERFLOW! Skipping step", grad norm null, learning
rate frozen) while the loss sits at 56,000 and the process exits 0. `DivergenceGuard` turns
these into a verdict, with the step where the trouble began so that a restart can roll back
to a checkpoint before it:

- a non-finite loss;
- a streak of optimizer steps that DeepSpeed skipped;
- a spike: the loss above `spike_ratio` × the median of the last `window` healthy steps, for
  `spike_patience` steps in a row (single spikes that recover are normal);
- a rising loss: the mean of the last `window` steps above `rise_ratio` × the best such mean.

Every rank feeds it the same all-reduced loss and the same skip flag, so every rank reaches
the same verdict at the same step and they stop together.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    reason: str
    step: int  # where it was detected
    since_step: int  # the first step of the anomaly: roll back to a checkpoint before it


class DivergenceGuard:
    def __init__(self, *, window: int = 50, spike_ratio: float | None = 2.0, spike_patience: int = 3,
                 max_skipped_steps: int | None = 5, rise_ratio: float | None = 1.5):  # fmt: skip
        self.spike_ratio, self.spike_patience = spike_ratio, spike_patience
        self.max_skipped_steps, self.rise_ratio = max_skipped_steps, rise_ratio
        self.healthy: deque[float] = deque(maxlen=window)
        self.skipped_since: int | None = None
        self.skipped = 0
        self.spike_since: int | None = None
        self.spikes = 0
        self.best_mean: tuple[float, int] | None = None  # (mean of a full window, its last step)

    def observe(self, step: int, loss: float, skipped: bool) -> Divergence | None:
        if not math.isfinite(loss):
            return Divergence(f"loss is {loss} at step {step}", step, step)
        if skipped:
            self.skipped += 1
            self.skipped_since = self.skipped_since or step
            if self.max_skipped_steps and self.skipped >= self.max_skipped_steps:
                return Divergence(
                    f"{self.skipped} optimizer steps in a row skipped on overflowing gradients (steps {self.skipped_since}-{step}, "
                    f"loss {loss:.4g}): the updates are blowing up",
                    step, self.skipped_since,
                )  # fmt: skip
            return None  # a skipped step's loss says nothing about the model's progress
        self.skipped, self.skipped_since = 0, None
        baseline = statistics.median(self.healthy) if self.healthy else None
        if self.spike_ratio and baseline and baseline > 0 and loss > self.spike_ratio * baseline:
            self.spikes += 1
            self.spike_since = self.spike_since or step
            if self.spikes >= self.spike_patience:
                return Divergence(
                    f"loss {loss:.4g} at step {step} is {loss / baseline:.1f}x the median of the previous {len(self.healthy)} "
                    f"healthy steps ({baseline:.4g}), {self.spikes} steps in a row since step {self.spike_since}",
                    step, self.spike_since,
                )  # fmt: skip
            return None
        self.spikes, self.spike_since = 0, None
        self.healthy.append(loss)
        if self.rise_ratio and len(self.healthy) == self.healthy.maxlen:
            mean = statistics.fmean(self.healthy)
            if self.best_mean is None or mean < self.best_mean[0]:
                self.best_mean = (mean, step)
            elif mean > self.rise_ratio * self.best_mean[0]:
                best, best_step = self.best_mean
                return Divergence(
                    f"loss is rising: mean {mean:.4g} over steps {step - len(self.healthy) + 1}-{step} against {best:.4g} "
                    f"over the {len(self.healthy)} steps up to {best_step}",
                    step, best_step,
                )  # fmt: skip
        return None
