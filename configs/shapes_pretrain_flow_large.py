"""The shapes testbed's larger flow base model, for the model-scaling claim (configs/experiments/
paper_claims.py): configs/shapes_pretrain_flow.py with twice the depth (4 double- + 4 single-stream blocks,
width 128: about twice the backbone's parameters and compute), the same data, schedule and steps.

Regenerate the shipped checkpoint (bit for bit on the same machine and software; resumable: a stopped run
continues from ``checkpoints/shapes_flow_large.state`` when the same command is run again):

    python -m slas_jax.testbed.pretrain --config configs/shapes_pretrain_flow_large.py

RL configs use it through ``configs/shapes_cpu.py:large``.
"""

import runpy
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = runpy.run_path(str(Path(__file__).resolve().parent / "shapes_pretrain_flow.py"))["get_config"]()
    c.model.architecture.num_layers = 4
    c.model.architecture.num_single_layers = 4
    c.pretrain.output_dir = "checkpoints/shapes_flow_large"
    return c
