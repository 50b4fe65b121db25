"""Learning-rate schedules as optax schedules of the step count."""

from __future__ import annotations

from collections.abc import Sequence

import optax

SCHEDULES = ("constant", "step", "cosine")


def make_schedule(
    kind: str,
    base_lr: float,
    total_steps: int,
    *,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup_steps: int = 0,
) -> optax.Schedule:
    """``constant``; ``step``: ``× gamma`` at each milestone (fractions of ``total_steps``);
    ``cosine``: cosine decay to 0 over ``total_steps``. ``warmup_steps > 0`` prepends a linear
    warm-up from 0 (counted inside ``total_steps``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; available: {', '.join(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps), got {warmup_steps}")
    main_steps = total_steps - warmup_steps
    if kind == "constant":
        main = optax.constant_schedule(base_lr)
    elif kind == "step":
        bounds = {round(f * total_steps) - warmup_steps: gamma for f in milestones}
        main = optax.piecewise_constant_schedule(
            base_lr, {k: v for k, v in bounds.items() if k > 0}
        )
    else:
        main = optax.cosine_decay_schedule(base_lr, main_steps)
    if warmup_steps == 0:
        return main
    warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warm, main], [warmup_steps])
