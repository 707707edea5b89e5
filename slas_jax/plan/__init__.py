"""Memory planner: per-device bytes of a run's GRPO step on a mesh, without allocating (``python -m
slas_jax.plan``; :mod:`slas_jax.plan.report` composes the rows of :mod:`~slas_jax.plan.rows` and the
compiled step of :mod:`~slas_jax.plan.step`)."""
