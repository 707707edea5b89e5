"""Evaluation: fixed prompt sets scored during training (``fixed_sets``), chunked sampling
(``generation``) and run reports (``report``)."""

from slas_jax.evaluate.fixed_sets import EvalSet, Evaluator, gain, repeat_rows
from slas_jax.evaluate.generation import generate_images
from slas_jax.evaluate.report import save_curves, save_grid, write_summary

__all__ = [
    "EvalSet",
    "Evaluator",
    "gain",
    "generate_images",
    "repeat_rows",
    "save_curves",
    "save_grid",
    "write_summary",
]
