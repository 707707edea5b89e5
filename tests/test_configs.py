"""The shipped config files: every one loads into a valid Config, and the shapes demo's variants select what
they name."""

import dataclasses
import re
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

from slas_jax.config import ConfigError, load_config
from slas_jax.losses import select_timesteps

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = ["brightness_cpu.py", "sd_tpu.py", "flux_tpu.py", "shapes_cpu.py"]
FLUX_PARAMETERS = [
    "transformer_blocks.attn.to_q.kernel.value",
    "single_transformer_blocks.proj_mlp.bias.value",
    "proj_out.bias.value",
    "norm_out.linear.kernel.value",
    "x_embedder.kernel.value",
    "time_text_embed.timestep_embedder.linear_1.bias.value",
]


def get_config(name: str, *args: str):
    return runpy.run_path(str(ROOT / "configs" / name))["get_config"](*args)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_configs_validate(name):
    load_config(get_config(name))


def test_shapes_demo_defaults_to_slas_on_the_flow_base_against_the_proxy():
    config = load_config(get_config("shapes_cpu.py"))
    assert config.model.family == "flux" and config.model.init_checkpoint == "checkpoints/shapes_flow"
    assert config.reward.name == "proxy" and config.advantage.method == "slas"
    assert config.eval.scorer == "shapes" and set(config.eval.sets) == {"train", "held_out"}
    assert config.train.output_dir == "runs/shapes_cpu"


@pytest.mark.parametrize(
    ("variant", "family", "reward", "method"),
    [
        ("unet", "unet", "proxy", "slas"),
        ("truth,dance_grpo", "flux", "shapes", "dance_grpo"),
        ("mean_only, unet, truth", "unet", "shapes", "mean_only"),
        ("flow_grpo", "flux", "proxy", "flow_grpo"),
    ],
)
def test_shapes_variants_select_backbone_reward_and_method(variant, family, reward, method):
    config = load_config(get_config("shapes_cpu.py", variant))
    assert (config.model.family, config.reward.name, config.advantage.method) == (family, reward, method)
    # The RL sampler is the one the base model was pretrained and evaluated with.
    kind = "flow" if family == "flux" else "unet"
    pretrain = get_config(f"shapes_pretrain_{kind}.py")
    assert config.sampler.name == pretrain.sampler.name
    assert config.sampler.num_steps == pretrain.sampler.num_steps
    assert config.model.init_checkpoint == f"checkpoints/shapes_{kind}"
    assert config.train.output_dir.startswith("runs/shapes_")


def test_the_large_variant_is_the_larger_flow_base_with_the_same_rl_settings():
    small, large = (load_config(get_config("shapes_cpu.py", v)) for v in ("dance_grpo", "large,dance_grpo"))
    assert large.model.init_checkpoint == "checkpoints/shapes_flow_large"
    base = get_config("shapes_pretrain_flow_large.py")
    assert large.model.architecture["num_layers"] == base.model.architecture.num_layers == 4
    assert large.model.architecture["num_single_layers"] == 4 and small.model.architecture["num_layers"] == 2
    assert (large.sampler, large.loss, large.optim, large.train.num_steps) == (
        small.sampler,
        small.loss,
        small.optim,
        small.train.num_steps,
    )
    with pytest.raises(ValueError, match="only \\['flow'\\] has a larger base model"):
        get_config("shapes_cpu.py", "unet,large")


def test_unknown_shapes_variant_names_the_choices():
    with pytest.raises(ValueError, match="unknown shapes_cpu variant 'fluxx'"):
        get_config("shapes_cpu.py", "fluxx")


def test_decoding_the_last_clean_estimate_requires_the_last_transition_untrained():
    for name in ("flux_tpu.py", "shapes_cpu.py"):
        config = load_config(get_config(name))
        assert config.sampler.decode == "prediction" and config.loss.exclude_last_steps >= 1, name
    config = get_config("shapes_cpu.py")
    config.sampler.sde_window = None
    config.loss.exclude_last_steps = 0
    with pytest.raises(ConfigError, match=r"loss\.exclude_last_steps: must be >= 1 with sampler\.decode"):
        load_config(config)
    config.loss.exclude_last_steps = None
    assert load_config(config).loss.exclude_last_steps == 1


def test_shapes_demo_draws_noise_at_the_transitions_it_trains_and_trains_only_the_transformer_blocks():
    config = load_config(get_config("shapes_cpu.py"))
    loss = config.loss
    index = select_timesteps(
        jax.random.PRNGKey(0),
        16,
        8,
        fraction=loss.timestep_fraction,
        exclude_first=loss.exclude_first_steps,
        exclude_last=loss.exclude_last_steps,
    )
    assert {tuple(sorted(row)) for row in np.asarray(index).tolist()} == {(3, 4)}
    assert config.sampler.sde_window == (3, 5)
    trained = [re.search(config.optim.trainable[0], name) is not None for name in FLUX_PARAMETERS]
    assert trained == [True, True, False, False, False, False]


@pytest.mark.parametrize(
    ("name", "prompts", "group", "update_size", "updates"),
    [("sd_tpu.py", 32, 16, 256, 2), ("flux_tpu.py", 16, 12, 64, 3)],
)
def test_the_tpu_recipes_have_dancegrpos_batch_structure_and_reward(
    name, prompts, group, update_size, updates
):
    config = load_config(get_config(name))
    tc = config.train
    assert (tc.prompts_per_step, tc.group_size) == (prompts, group)
    assert tc.micro_batch_size * tc.grad_accum_steps == update_size
    assert prompts * group // update_size == updates
    assert config.reward.name == "hps_v2" and config.sampler.same_noise_in_group
    # Only DanceGRPO's SD script scores HPS through a JPEG file; its FLUX script saves PNGs.
    assert config.reward.options.get("jpeg_quality") == (75 if name == "sd_tpu.py" else None)
    assert config.advantage.method == "slas" and config.optim.grad_clip == 1.0
    baseline = load_config(get_config(name, "dance_grpo"))
    assert baseline.advantage.method == "dance_grpo" and baseline.advantage.eps == 1e-8
    assert dataclasses.replace(baseline.train, output_dir=tc.output_dir) == tc
    with pytest.raises(ValueError, match=r"unknown .* variant 'nope'"):
        get_config(name, "nope")


def test_every_backbone_can_export_its_policy():
    for name in ("brightness_cpu.py", "shapes_cpu.py", "sd_tpu.py"):
        config = get_config(name)
        config.train.export_every = 5
        assert load_config(config).train.export_every == 5, name


def test_a_trainable_pattern_that_is_not_a_regular_expression_is_refused():
    with pytest.raises(ConfigError, match=r"config.optim.trainable: '\(attn' is not a regular expression"):
        load_config({"optim": {"trainable": ("(attn",)}})


def test_an_sde_window_must_fit_the_sampler_and_hold_every_trained_step():
    config = get_config("shapes_cpu.py")
    config.sampler.sde_window = (3, 9)
    with pytest.raises(
        ConfigError, match=r"sampler\.sde_window: must be \(start, end\) with 0 <= start < end"
    ):
        load_config(config)
    config.sampler.sde_window = [2, 4]
    config.loss.exclude_first_steps, config.loss.exclude_last_steps = 2, 3
    with pytest.raises(ConfigError, match=r"trains steps \[2, 5\) but only sampler\.sde_window = \[2, 4\)"):
        load_config(config)
    config.loss.exclude_last_steps = 4
    assert load_config(config).sampler.sde_window == (2, 4)
