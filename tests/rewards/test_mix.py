"""Specification of the mixed reward: registered rewards built from ``reward.components`` and scored together,
each with its own parameters and prepared batch arrays, and a run that logs every component."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from slas_jax.config import RewardConfig, from_mapping, load_config
from slas_jax.errors import ConfigError
from slas_jax.rewards import REWARDS, Reward, register
from slas_jax.rewards.mix import build_mixed_reward

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scaled_reward():
    """A reward that, like PickScore and CLIP score, prepares its prompt arrays under a fixed key."""

    @register("test_scaled")
    def scaled(scale: float) -> Reward:
        def fn(params, images, batch):
            return params * images.mean(axis=(1, 2, 3)) + batch["reward_tokens"][:, 0]

        def prepare(texts):
            return {"reward_tokens": np.asarray([[scale * len(t)] for t in texts], np.float32)}

        return Reward(fn=fn, params=jnp.float32(scale), prepare=prepare, reads=("region",))

    yield "test_scaled"
    del REWARDS._entries["test_scaled"]


def test_components_keep_their_own_parameters_and_batch_arrays(scaled_reward):
    config = from_mapping(
        RewardConfig,
        {
            "name": "mix",
            "components": {
                "one": {"name": scaled_reward, "options": {"scale": 1.0}},
                "ten": {"name": scaled_reward, "options": {"scale": 10.0}},
            },
        },
    )
    reward = build_mixed_reward(config)
    assert reward.reads == ("region",)
    prepared = reward.prepare(["ab", "abcd"])
    assert sorted(prepared) == ["one/reward_tokens", "ten/reward_tokens"]
    images = jnp.full((2, 2, 2, 3), 0.5)
    scores = reward.fn(reward.params, images, {**prepared, "region": jnp.zeros((2,))})
    np.testing.assert_allclose(scores, [[0.5 + 2, 5 + 20], [0.5 + 4, 5 + 40]], rtol=1e-6)


def test_a_host_reward_cannot_be_mixed():
    @register("test_host")
    def host_reward() -> Reward:
        return Reward(fn=None, host=lambda images, prompts, arrays: (np.zeros(len(images), np.float32), ()))

    try:
        config = from_mapping(RewardConfig, {"name": "mix", "components": {"far": {"name": "test_host"}}})
        with pytest.raises(
            ConfigError, match=r"config\.reward\.components\.far\.name: 'test_host' runs on the host"
        ):
            build_mixed_reward(config)
    finally:
        del REWARDS._entries["test_host"]


@pytest.fixture
def dark_reward():
    """A held-out reward that disagrees with the training one: the prompt's region's darkness, 1 - brightness."""
    from slas_jax.testbed.brightness import region_brightness

    @register("test_dark")
    def dark() -> Reward:
        return Reward(
            fn=lambda _params, images, batch: 1.0 - region_brightness(images, batch["region"]),
            reads=("region",),
        )

    yield "test_dark"
    del REWARDS._entries["test_dark"]


@pytest.mark.slow
def test_a_mixed_run_logs_every_component_and_its_held_out_rewards(tmp_path, dark_reward):
    """One run of the brightness smoke task (both checks share its compilation): a mixed training reward
    logs each component beside the mix, and held-out rewards on a fixed set log their scores and gaps in the
    metrics and the run summary."""
    from slas_jax.train import COMMAND, run

    values = COMMAND.parse(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "brightness_cpu.py"),
            "--config.train.num_steps=2",
            "--config.train.prompts_per_step=2",
            "--config.train.micro_batch_size=16",
            f"--config.train.output_dir={tmp_path}",
            "--config.eval.every=1",
            "--config.eval.num_prompts=5",
        ]
    ).config
    values.reward.name = "mix"
    values.reward.aggregate = "advantages"
    values.reward.components = {
        "raw": {"name": "brightness", "weight": 0.25},
        "standardised": {"name": "brightness", "normalize": True},
    }
    values.eval.sets = {"fixed": {"name": "brightness"}}
    values.eval.rewards = {"bright": {"name": "brightness"}, "dark": {"name": dark_reward}}
    history = run(load_config(values))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    for record in records:
        # The standardised component has batch mean 0, so the mix is the raw one's share alone; both
        # components log their raw scores.
        assert record["reward_mean"] == pytest.approx(0.25 * record["reward/raw"], abs=1e-5)
        assert record["reward/standardised"] == pytest.approx(record["reward/raw"], rel=1e-6)
        # On the fixed set: the training reward is the mix of the images' brightness, the same 0.25 share.
        assert record["fixed/reward"] == pytest.approx(0.25 * record["fixed/bright"], abs=1e-5)
        assert record["fixed/dark"] == pytest.approx(1.0 - record["fixed/bright"], abs=1e-5)
        # dark = 1 - brightness: its gain is the brightness gain's opposite, so the gaps differ by twice
        # the brightness gain, whose sign is that of the brightness change.
        assert {"fixed/gap/bright", "fixed/gap/dark"} <= set(record)
    before = json.loads((tmp_path / "final.json").read_text())["before"]
    assert before["fixed/gap/bright"] == before["fixed/gap/dark"] == 0.0
    moved = history[-1]["fixed/bright"] - before["fixed/bright"]
    spread = history[-1]["fixed/gap/dark"] - history[-1]["fixed/gap/bright"]
    assert np.sign(spread) == np.sign(moved)
    summary = (tmp_path / "summary.md").read_text()
    assert "| fixed/gap/dark |" in summary and "| fixed/bright |" in summary
    assert "reward/raw" not in summary
