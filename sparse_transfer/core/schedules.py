"""Schedules as small pure functions of the step (or epoch): easy to plot, easy to test."""

from __future__ import annotations


def gmp_sparsity(step: int, initial_sparsity: float, final_sparsity: float, start_step: int, end_step: int) -> float:
    """Cubic gradual-magnitude-pruning schedule (Zhu & Gupta, 2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3`` for ``t0 <= t <= t1``; ``s_i`` before
    ``t0`` and ``s_f`` after ``t1``.
    """
    if end_step < start_step:
        raise ValueError(f"GMP end step ({end_step}) is before its start step ({start_step}).")
    if step < start_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def gmp_is_update_step(step: int, start_step: int, end_step: int, interval: int) -> bool:
    """Whether GMP prunes at ``step``: every ``interval`` steps from ``start_step`` up to and including ``end_step``."""
    if interval <= 0:
        raise ValueError(f"GMP update interval must be a positive number of steps, got {interval}.")
    return start_step <= step <= end_step and (step - start_step) % interval == 0


def rewind_lr_factor(step: int, steps_per_stage: int, end_factor: float = 0.0) -> float:
    """Linear decay from 1 to ``end_factor`` within each stage, rewound to 1 at every stage start.

    ``step`` counts optimizer steps from 0; the factor at the first step of a stage is 1 and would reach
    ``end_factor`` one step after the stage's last step (as ``get_linear_schedule_with_warmup`` does).
    """
    if steps_per_stage <= 0:
        raise ValueError(f"steps_per_stage must be positive, got {steps_per_stage}.")
    position = step % steps_per_stage
    return 1.0 - (1.0 - end_factor) * position / steps_per_stage
