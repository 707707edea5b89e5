"""The command-line skeleton: every bad command line or input ends with one line on stderr and exit code 2
(never a traceback), ``--verbose`` is a real boolean flag, and ``--help`` documents every command."""

from pathlib import Path

import pytest
from cli_runner import run_module

from slas_jax import convert, train
from slas_jax.testbed import pretrain, train_proxy

ROOT = Path(__file__).resolve().parents[1]
UNET = str(ROOT / "configs" / "brightness_cpu.py")
FLOW = str(ROOT / "configs" / "shapes_cpu.py")


def one_line_error(capsys, main, argv) -> str:
    """Runs ``main(argv)`` in this process and returns its one stderr line (exit code 2 asserted)."""
    assert main(["prog", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


BAD_TRAIN_OVERRIDES = [
    # model
    ((UNET, "--config.model.family=dit"), "config.model.family: must be one of 'unet', 'flux'"),
    ((UNET, "--config.model.resolution=4"), "config.model.resolution: must be >= 8"),
    ((UNET, "--config.model.dtype=float8"), "config.model.dtype: must be one of"),
    ((UNET, "--config.model.remat=maybe"), "--config.model.remat"),
    ((UNET, "--config.model.architecture.norm_num_groups=3"), "config.model.architecture.norm_num_groups"),
    ((UNET, "--config.model.architecture.nope=3"), "unknown config key 'model.architecture.nope'"),
    (
        (UNET, "--config.model.text_architecture.hidden_size=-32"),
        "config.model.text_architecture.hidden_size",
    ),
    ((UNET, "--config.model.init_checkpoint=/nowhere"), "/nowhere"),
    # sampler
    (
        (UNET, "--config.sampler.name=euler"),
        "config.sampler.name: unknown sampler 'euler'; choose one of dance_flow, ddim, flow_sde",
    ),
    ((UNET, "--config.sampler.num_steps=1"), "config.sampler.num_steps: must be >= 2"),
    ((UNET, "--config.sampler.noise_level=0"), "config.sampler.noise_level: must be > 0"),
    ((UNET, "--config.sampler.guidance_scale=0.5"), "config.sampler.guidance_scale: must be >= 1"),
    ((UNET, "--config.sampler.decode=latent"), "config.sampler.decode: must be one of"),
    ((UNET, "--config.sampler.sde_window=(4,2)"), "config.sampler.sde_window: must be (start, end)"),
    ((UNET, "--config.sampler.name=flow_sde"), "does not fit model.family='unet'"),
    ((FLOW, "--config.sampler.name=ddim"), "does not fit model.family='flux'"),
    # advantage
    ((UNET, "--config.advantage.method=ppo"), "config.advantage.method: unknown method 'ppo'"),
    ((UNET, "--config.advantage.gamma=-1"), "config.advantage.gamma: must be >= 0"),
    ((UNET, "--config.advantage.eps=0"), "config.advantage.eps: must be > 0"),
    ((UNET, "--config.advantage.slas_normalize=never"), "config.advantage.slas_normalize: must be one of"),
    # loss
    ((UNET, "--config.loss.clip_range=0"), "config.loss.clip_range: must be > 0"),
    ((UNET, "--config.loss.kl_beta=-0.1"), "config.loss.kl_beta: must be >= 0"),
    ((UNET, "--config.loss.timestep_fraction=1.5"), "config.loss.timestep_fraction: must be in (0, 1]"),
    ((UNET, "--config.loss.exclude_first_steps=6"), "config.loss.exclude_last_steps: plus"),
    ((FLOW, "--config.loss.exclude_first_steps=0"), "only sampler.sde_window = [3, 5) is stochastic"),
    (
        (UNET, "--config.sampler.decode=prediction", "--config.loss.exclude_last_steps=0"),
        "config.loss.exclude_last_steps: must be >= 1 with sampler.decode='prediction'",
    ),
    # optim
    ((UNET, "--config.optim.learning_rate=0"), "config.optim.learning_rate: must be > 0"),
    ((UNET, "--config.optim.grad_clip=-1"), "config.optim.grad_clip: must be > 0"),
    ((UNET, "--config.optim.trainable=('(',)"), "config.optim.trainable: '(' is not a regular expression"),
    ((UNET, "--config.optim.trainable=('nomatch',)"), "config.optim.trainable: 'nomatch' matches no"),
    # train
    ((UNET, "--config.train.num_steps=0"), "config.train.num_steps: must be >= 1"),
    ((UNET, "--config.train.num_steps=abc"), "--config.train.num_steps=abc"),
    ((UNET, "--config.train.group_size=1"), "config.train.group_size: must be >= 2"),
    ((UNET, "--config.train.micro_batch_size=5"), "config.train.micro_batch_size: micro_batch_size x"),
    ((UNET, "--config.train.checkpoint_every=-1"), "config.train.checkpoint_every"),
    ((UNET, "--config.train.gama=1"), "unknown config key 'train.gama'"),
    # mesh
    ((UNET, "--config.mesh.data=0"), "config.mesh.data: must be >= 1 or -1"),
    ((UNET, "--config.mesh.fsdp=3"), "config.mesh"),
    # reward
    ((UNET, "--config.reward.name=nope"), "config.reward.name: unknown reward 'nope'"),
    ((FLOW + ":truth", "--config.reward.options.kind=best"), "config.reward.options.kind: must be one of"),
    ((UNET, "--config.reward.name=shapes"), "reward 'shapes' reads shapes_spec"),
    # data
    ((UNET, "--config.data.name=nope"), "config.data.name: unknown prompt source 'nope'"),
    ((UNET, "--config.data.name=text_file"), "config.data.options.path: set it"),
    ((FLOW, "--config.data.options.split=test"), "config.data.options"),
    ((FLOW, "--config.data.options.nope=1"), "unknown config key 'data.options.nope'"),
    # eval
    ((FLOW, "--config.eval.scorer=nope"), "config.eval.scorer: unknown scorer 'nope'"),
    ((FLOW, "--config.eval.every=0"), "config.eval.every: must be >= 1"),
    ((FLOW, "--config.eval.num_prompts=0"), "num_prompts and samples_per_prompt must be >= 1"),
    (
        (FLOW, "--config.eval.sets.held_out.name=nope"),
        "config.eval.sets.held_out.name: unknown prompt source",
    ),
    # the command line itself
    (("configs/nope.py",), "config file configs/nope.py does not exist"),
    ((FLOW + ":unet,bogus",), "unknown shapes_cpu variant 'bogus'"),
]


@pytest.mark.parametrize(
    ("args", "expected"), BAD_TRAIN_OVERRIDES, ids=[a[-1] for a, _ in BAD_TRAIN_OVERRIDES]
)
def test_bad_train_overrides_end_in_one_line(capsys, args, expected):
    assert expected in one_line_error(capsys, train.main, ["--config", *args])


def test_a_text_file_source_cannot_feed_a_reward_that_reads_arrays(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("bright top\nbright left\n")
    config = tmp_path / "text_prompts.py"
    config.write_text(
        "import runpy\n\n\ndef get_config():\n"
        f"    c = runpy.run_path({UNET!r})['get_config']()\n"
        f"    c.data.name, c.data.options = 'text_file', {{'path': {str(prompts)!r}, 'data_dir': {str(tmp_path)!r}}}\n"
        "    return c\n"
    )
    line = one_line_error(capsys, train.main, ["--config", str(config)])
    assert "reward 'brightness' reads region" in line and "prompt source 'text_file'" in line


@pytest.mark.parametrize(
    ("main", "argv", "expected"),
    [
        (train.main, [], "missing --config; pass --config configs/<name>.py"),
        (train.main, ["--config", UNET, "--nope"], "Unknown command line flag 'nope'"),
        (train.main, ["--config", UNET, "extra"], "expected 0 arguments"),
        (
            pretrain.main,
            ["--config", "configs/shapes_pretrain_flow.py", "--config.pretrain.steps=0"],
            "steps",
        ),
        (pretrain.main, ["--config", "configs/shapes_pretrain_flow.py", "--config.pretrain.nope=1"], "nope"),
        (train_proxy.main, ["--config", "configs/shapes_proxy.py", "--config.renders=0"], "renders"),
        (train_proxy.main, [], "missing --config; pass --config configs/shapes_proxy.py"),
        (convert.main, ["only-one"], "expected 2 arguments (source out)"),
        (convert.main, ["/nowhere", "/tmp/out"], "/nowhere"),
    ],
)
def test_every_command_reports_bad_input_in_one_line(capsys, main, argv, expected):
    assert expected in one_line_error(capsys, main, argv)


@pytest.mark.parametrize("flag", ["--verbose", "--verbose=true", "--verbose=1"])
def test_verbose_in_any_spelling_shows_the_traceback(flag):
    with pytest.raises(Exception, match=r"config\.train\.num_steps: must be >= 1"):
        train.main(["prog", "--config", UNET, "--config.train.num_steps=0", flag])


def test_noverbose_keeps_the_one_line(capsys):
    assert "num_steps" in one_line_error(
        capsys, train.main, ["--config", UNET, "--config.train.num_steps=0", "--noverbose"]
    )


@pytest.mark.parametrize(
    ("main", "expected"),
    [
        (
            train.main,
            [
                "usage: python -m slas_jax.train --config configs/<name>.py",
                "config.advantage.gamma (default 1.0)",
                "multihost",
            ],
        ),
        (
            pretrain.main,
            ["usage: python -m slas_jax.testbed.pretrain", "config.pretrain.steps (default 1000)"],
        ),
        (
            train_proxy.main,
            ["usage: python -m slas_jax.testbed.train_proxy", "config.renders (default 1024)"],
        ),
        (convert.main, ["usage: python -m slas_jax.convert source out"]),
    ],
)
def test_help_describes_each_command(capsys, main, expected):
    assert main(["prog", "--help"]) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_help_in_a_fresh_process():
    out = run_module("slas_jax.train", "--help")
    assert out.returncode == 0 and "config.sampler.sde_window" in out.stdout
