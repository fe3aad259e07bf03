"""The divergence guard on loss curves: healthy noisy training passes, each kind of blow-up is
caught with the step where it began."""

from __future__ import annotations

import math

import numpy as np

from model.health import DivergenceGuard


def healthy_curve(steps: int, seed: int = 0) -> list[float]:
    """Fast early drop, then a slow decline, with 3% noise and the odd 1.6x bump."""
    rng = np.random.default_rng(seed)
    losses = 2.5 + 7.0 * np.exp(-np.arange(steps) / 30) + 0.3 * np.exp(-np.arange(steps) / 400)
    losses *= 1 + 0.03 * rng.standard_normal(steps)
    losses[rng.choice(steps, 5, replace=False)] *= 1.6
    return losses.tolist()


def run(guard: DivergenceGuard, losses: list[float], skipped: set[int] = frozenset()):
    for step, loss in enumerate(losses, start=1):
        found = guard.observe(step, loss, step in skipped)
        if found:
            return found
    return None


def test_healthy_training_is_never_called_diverged():
    for seed in range(5):
        assert run(DivergenceGuard(), healthy_curve(2000, seed)) is None


def test_non_finite_loss_stops_at_once():
    found = run(DivergenceGuard(), [9.0, 8.0, math.nan])
    assert (found.step, found.since_step) == (3, 3) and "loss is nan at step 3" in found.reason


def test_a_streak_of_skipped_steps_is_a_divergence():
    """What DeepSpeed did with a too-high learning rate: loss ~56,000, every step skipped."""
    losses = [9.1] + [56_000.0] * 30
    found = run(DivergenceGuard(max_skipped_steps=5, spike_ratio=None, rise_ratio=None), losses, skipped=set(range(2, 32)))
    assert (found.step, found.since_step) == (6, 2) and "5 optimizer steps in a row skipped" in found.reason
    # A few skips that end (fp16 loss-scale search) are not.
    assert run(DivergenceGuard(max_skipped_steps=5), healthy_curve(200), skipped={3, 4, 5}) is None


def test_a_sustained_spike_is_caught_where_it_began():
    losses = healthy_curve(100)[:60] + [40.0, 55.0, 80.0, 120.0]
    found = run(DivergenceGuard(), losses)
    assert (found.step, found.since_step) == (63, 61) and "3 steps in a row since step 61" in found.reason


def test_a_slow_rise_is_caught_against_the_best_window():
    losses = healthy_curve(150)[:100]
    rising = [losses[-1] * (1.02**k) for k in range(1, 200)]  # +2% a step: never a spike
    found = run(DivergenceGuard(window=20), losses + rising)
    assert found is not None and "rising" in found.reason and found.since_step <= found.step - 20
