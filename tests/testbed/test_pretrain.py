"""Pretraining of the shapes base models: tiny smoke runs write checkpoints that restore exactly, regeneration
is bit for bit, the shipped checkpoints load into the bundles their configs build, and bad inputs fail with one
line naming the fix."""

import dataclasses
import os
import re
import runpy
import signal
from pathlib import Path

import jax
import pytest
from cli_runner import one_line_error, run_module

from slas_jax.config import ModelConfig, from_mapping, json_ready
from slas_jax.errors import ConfigError
from slas_jax.models.conversion import ConversionError
from slas_jax.pipelines import build_pipeline
from slas_jax.testbed import pretrain
from slas_jax.weights import (
    export_policy,
    load_policy,
    params_hash,
    read_metadata,
    restore_pretrained,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMOKE_COMMAND = "python -m slas_jax.testbed.pretrain --config smoke.py"
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1}
TINY = {
    "flux": (
        {
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 1,
            "axes_dims_rope": (4, 6, 6),
        },
        {"name": "flow_sde", "num_steps": 2, "noise_level": 0.7, "shift": 3.0},
        (r"^proj_out\.",),
    ),
    "unet": (
        {
            "block_out_channels": (8, 16),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "layers_per_block": 1,
            "num_attention_heads": 1,
            "norm_num_groups": 4,
        },
        {"name": "ddim", "num_steps": 2},
        (r"^conv_out\.",),
    ),
}


def tiny_configs(family: str, output_dir: Path):
    architecture, sampler, zero = TINY[family]
    return pretrain.load_pretrain_config(
        {
            "model": {
                "family": family,
                "resolution": 32,
                "architecture": architecture,
                "text_architecture": TEXT,
            },
            "sampler": sampler,
            "pretrain": {
                "steps": 2,
                "batch_size": 4,
                "warmup_steps": 1,
                "zero_init": zero,
                "output_dir": str(output_dir),
                "eval_samples_per_prompt": 1,
                "eval_prompts": 3,
                "eval_chunk": 4,
            },
        }
    )


def restored_hash(config, folder: Path) -> str:
    model = dataclasses.replace(config.model, init_checkpoint=str(folder))
    bundle = build_pipeline(dataclasses.replace(config, model=model), read_metadata(folder)["vocabulary"])
    return params_hash({"backbone": bundle.params, "text": bundle.frozen["text"]})


@pytest.fixture(scope="module", params=["flux", "unet"])
def smoke_run(request, tmp_path_factory):
    """A two-step pretraining run of a tiny model of each family: (config, pretrain config, metadata)."""
    config, pc = tiny_configs(request.param, tmp_path_factory.mktemp(request.param) / "ckpt")
    return config, pc, pretrain.run(config, pc, command=SMOKE_COMMAND, progress=False)


def test_smoke_run_checkpoint_restores_identically(smoke_run):
    config, pc, metadata = smoke_run
    assert set(metadata["eval"]) == {"train", "held_out"}
    for split in metadata["eval"].values():
        assert split["images"] == 3 and 0.0 <= split["strict"] <= split["partial"] <= 1.0
    assert metadata["model"] == json_ready(config.model)
    random_bundle = build_pipeline(config, metadata["vocabulary"])
    random_hash = params_hash({"backbone": random_bundle.params, "text": random_bundle.frozen["text"]})
    assert restored_hash(config, Path(pc.output_dir)) == metadata["params_sha256"] != random_hash


def test_regeneration_is_bit_for_bit(smoke_run, tmp_path):
    config, pc, metadata = smoke_run
    again = pretrain.run(config, dataclasses.replace(pc, output_dir=str(tmp_path)), progress=False)
    assert again["params_sha256"] == metadata["params_sha256"]
    assert again["eval"] == metadata["eval"]


def test_a_stopped_pretraining_continues_bit_for_bit(smoke_run, tmp_path, monkeypatch):
    """SIGTERM during step 3 of 6: the step finishes, its state is saved (checkpoints every 4 steps would
    have lost it) and the run stops in one line; the same command then ends bit for bit as an uninterrupted
    run, and removes the state."""
    config, pc, _ = smoke_run
    if config.model.family != "flux":
        pytest.skip("one family suffices")
    pc = dataclasses.replace(pc, steps=6, checkpoint_every=4, eval_samples_per_prompt=0)
    straight = pretrain.run(
        config, dataclasses.replace(pc, output_dir=str(tmp_path / "straight")), progress=False
    )
    stopped = dataclasses.replace(pc, output_dir=str(tmp_path / "stopped"))
    render = pretrain.render_batch

    def signal_at_step_2(specs, seed, step, batch_size):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return render(specs, seed, step, batch_size)

    monkeypatch.setattr(pretrain, "render_batch", signal_at_step_2)
    with pytest.raises(
        pretrain.Stopped, match=r"^stopped by SIGTERM after step 3 of 6; saved in .*: run the same"
    ):
        pretrain.run(config, stopped, progress=False)
    monkeypatch.setattr(pretrain, "render_batch", render)
    state = tmp_path / f"stopped{pretrain.STATE_SUFFIX}"
    assert (state / "3").is_dir() and not (tmp_path / "stopped").exists()
    with pytest.raises(ConfigError, match="another configuration; remove it"):
        pretrain.train(config, dataclasses.replace(stopped, seed=1), progress=False)
    deeper = {**config.model.architecture, "num_layers": 2}
    other_model = dataclasses.replace(config, model=dataclasses.replace(config.model, architecture=deeper))
    with pytest.raises(ConfigError, match="another configuration; remove it"):
        pretrain.train(other_model, stopped, progress=False)
    resumed = pretrain.run(config, stopped, progress=False)
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["loss"] == straight["loss"]
    assert not state.exists()


def test_other_seed_gives_other_weights(smoke_run, tmp_path):
    config, pc, metadata = smoke_run
    if config.model.family != "flux":
        pytest.skip("one family suffices")
    other = pretrain.run(config, dataclasses.replace(pc, seed=1, output_dir=str(tmp_path)), progress=False)
    assert other["params_sha256"] != metadata["params_sha256"]


def test_architecture_mismatch_and_missing_folder_name_the_regenerate_command(smoke_run, tmp_path):
    config, pc, _ = smoke_run
    wider = dict(config.model.text_architecture, hidden_size=32, intermediate_size=64)
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, text_architecture=wider))
    bundle = build_pipeline(other, read_metadata(pc.output_dir)["vocabulary"])
    with pytest.raises(ConversionError, match=f"does not fit.*{re.escape(SMOKE_COMMAND)}"):
        restore_pretrained(bundle, pc.output_dir)
    with pytest.raises(FileNotFoundError, match=r"is missing.*pretraining run or train\.export_every"):
        restore_pretrained(bundle, tmp_path / "nowhere")


def test_exported_policy_loads_as_a_base_model_with_its_origin(smoke_run, tmp_path):
    _, pc, metadata = smoke_run
    base_config, bundle = load_policy(pc.output_dir)
    trained = jax.tree.map(lambda x: x + 1, bundle.params)
    vocabulary = metadata["vocabulary"]
    digest = export_policy(tmp_path / "policy", base_config, trained, bundle.frozen, {"step": 3}, vocabulary)
    policy_config, policy = load_policy(tmp_path / "policy")
    assert params_hash({"backbone": policy.params, "text": policy.frozen["text"]}) == digest
    assert digest != metadata["params_sha256"]
    assert policy_config.model == dataclasses.replace(
        base_config.model, init_checkpoint=str(tmp_path / "policy")
    )
    assert policy_config.sampler == base_config.sampler
    assert read_metadata(tmp_path / "policy")["rl"] == {"step": 3, "init_checkpoint": str(pc.output_dir)}


def test_a_randomly_initialised_policy_exports_too(smoke_run, tmp_path):
    config, _, metadata = smoke_run
    bundle = build_pipeline(config, metadata["vocabulary"])
    digest = export_policy(
        tmp_path / "random", config, bundle.params, bundle.frozen, {}, metadata["vocabulary"]
    )
    _, policy = load_policy(tmp_path / "random")
    assert params_hash({"backbone": policy.params, "text": policy.frozen["text"]}) == digest
    assert read_metadata(tmp_path / "random")["rl"] == {"init_checkpoint": None}


def test_rl_run_exports_its_policy_every_n_steps(smoke_run, tmp_path):
    from slas_jax.config import load_config
    from slas_jax.train import run

    config, pc, metadata = smoke_run
    if config.model.family != "flux":
        pytest.skip("one family suffices")
    values = runpy.run_path(str(ROOT / "configs" / "shapes_cpu.py"))["get_config"]()
    values.model = json_ready(dataclasses.replace(config.model, init_checkpoint=pc.output_dir))
    values.sampler = json_ready(config.sampler)
    values.loss.exclude_first_steps, values.loss.exclude_last_steps = 0, 1
    values.train.update(num_steps=2, prompts_per_step=2, group_size=2, micro_batch_size=4, export_every=1)
    values.train.output_dir = str(tmp_path / "run")
    values.eval.scorer = ""
    values.reward.name, values.reward.options = "shapes", {"kind": "partial"}
    values.data.options.data_dir = str(tmp_path / "tfds")
    run(load_config(values))
    hashes = [read_metadata(tmp_path / "run" / "policy" / f"step_{n}")["params_sha256"] for n in (1, 2)]
    assert sorted(p.name for p in (tmp_path / "run" / "policy").iterdir()) == ["step_1", "step_2"]
    assert len({metadata["params_sha256"], *hashes}) == 3
    _, policy = load_policy(tmp_path / "run" / "policy" / "step_2")
    assert params_hash({"backbone": policy.params, "text": policy.frozen["text"]}) == hashes[1]


@pytest.mark.parametrize("name", ["flow", "unet", "flow_large"])
def test_shipped_checkpoints_load_into_their_configs(name):
    folder = ROOT / "checkpoints" / f"shapes_{name}"
    config, pc = pretrain.load_pretrain_config(
        runpy.run_path(str(ROOT / "configs" / f"shapes_pretrain_{name}.py"))["get_config"]()
    )
    metadata = read_metadata(folder)
    # Read as load_policy reads it: fields added since the folder was written (the model's LoRA and
    # frozen_dtype, pretrain.checkpoint_every) take their defaults, which describe the shipped model.
    assert json_ready(from_mapping(ModelConfig, metadata["model"])) == json_ready(config.model)
    assert json_ready(from_mapping(pretrain.PretrainConfig, metadata["pretrain"])) == json_ready(pc)
    assert restored_hash(config, folder) == metadata["params_sha256"]
    # The base model is imperfect on purpose, but not useless.
    assert 0.05 < metadata["eval"]["train"]["strict"] < 0.8
    recorded_config, _ = load_policy(folder)
    assert recorded_config.sampler == config.sampler


def test_zero_init_pattern_that_matches_nothing_is_refused(tmp_path):
    config, pc = tiny_configs("flux", tmp_path)
    with pytest.raises(Exception, match=r"config.pretrain.zero_init: 'nope' matches no backbone parameter"):
        pretrain.train(config, dataclasses.replace(pc, zero_init=("nope",)), progress=False)


def test_cli_bad_value_fails_with_one_line():
    out = run_module(
        "slas_jax.testbed.pretrain",
        "--config",
        ROOT / "configs" / "shapes_pretrain_flow.py",
        "--config.pretrain.steps=0",
    )
    assert one_line_error(out) == "error: config.pretrain.steps: must be >= 1, got 0"
