"""The optimizer the testbed's pretraining and proxy training share."""

from __future__ import annotations

import optax


def warmup_cosine_adamw(
    learning_rate: float,
    warmup_steps: int,
    steps: int,
    *,
    final_lr_fraction: float,
    grad_clip: float,
    weight_decay: float,
) -> optax.GradientTransformation:
    """AdamW with linear warmup to ``learning_rate`` and cosine decay to ``final_lr_fraction`` of it at
    ``steps``, behind global-norm clipping at ``grad_clip``."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, steps, end_value=learning_rate * final_lr_fraction
    )
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(schedule, weight_decay=weight_decay))
