"""The smallest run the resume tests train through the CLI: configs/brightness_cpu.py with two prompts of two
samples, three sampler steps, five steps with a checkpoint after each (the newest three kept) and a held-out
reward, so that the run writes the before/after evaluation, summary and curves a resumed run must reproduce;
``resume_brightness.py:no_eval`` without the evaluation (the same train step, less to trace)."""

import runpy
from pathlib import Path

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = runpy.run_path(str(Path(__file__).parents[1] / "configs" / "brightness_cpu.py"))["get_config"]()
    c.train.num_steps = 5
    c.train.prompts_per_step = 2
    c.train.group_size = 2
    c.train.micro_batch_size = 4
    c.train.checkpoint_every = 1
    c.train.keep_checkpoints = 3
    c.train.tensorboard = False
    c.sampler.num_steps = 3
    if variant != "no_eval":
        c.eval.rewards = {"bright": {"name": "brightness"}}
    c.eval.every = 2
    c.eval.num_prompts = 2
    c.eval.samples_per_prompt = 1
    c.eval.grid_prompts = 2
    return c
