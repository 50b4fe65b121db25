"""Learning-rate schedules as optax schedules of the step count."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "step", "cosine", "torch_cosine")


def torch_cosine(base_lr: float, epochs: int, steps_per_epoch: int,
                 eta_min_ratio: float = 0.0) -> optax.Schedule:
    """``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs, eta_min=ratio * lr)`` stepped
    once per epoch, as the official AWS ImageNet runs use it (``optim/utils.py``:
    ``eta_min=args.lr * 0.001``): epoch ``e`` trains at
    ``eta_min + (lr - eta_min) (1 + cos(pi e / epochs)) / 2``."""
    eta_min = base_lr * eta_min_ratio

    def schedule(step):
        e = jnp.minimum(step // steps_per_epoch, epochs)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * e / epochs)) / 2

    return schedule


def make_schedule(
    kind: str,
    base_lr: float,
    total_steps: int,
    *,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    steps_per_epoch: int | None = None,
    eta_min_ratio: float = 0.0,
) -> optax.Schedule:
    """``constant``; ``step``: ``× gamma`` at each milestone (fractions of ``total_steps``);
    ``cosine``: cosine decay to 0 over ``total_steps``; ``torch_cosine``: :func:`torch_cosine`
    over ``total_steps / steps_per_epoch`` epochs. ``warmup_steps > 0`` prepends a linear
    warm-up from 0 (counted inside ``total_steps``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; available: {', '.join(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps), got {warmup_steps}")
    main_steps = total_steps - warmup_steps
    if kind == "torch_cosine":
        per_epoch = steps_per_epoch or total_steps
        main = torch_cosine(base_lr, max(1, main_steps // per_epoch), per_epoch, eta_min_ratio)
    elif kind == "constant":
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
