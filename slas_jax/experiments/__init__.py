"""Experiment grids on the testbed: ``python -m slas_jax.experiments --config configs/experiments/<name>.py``
expands a grid config into cells (``grid``), runs each as a training process that resumes (``runner``), and
writes ``report.md`` with plots (``report``, ``plots``) from bootstrap statistics (``stats``)."""
