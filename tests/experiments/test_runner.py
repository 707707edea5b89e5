"""The runner's bookkeeping without training: cells' plans, a metrics file read while it is written, the
grid lock. (tests/experiments/test_experiments_cli.py runs real cells, kills and resumes them.)"""

from pathlib import Path
from types import SimpleNamespace

import pytest

from slas_jax.errors import ConfigError, UserError
from slas_jax.experiments.grid import Cell
from slas_jax.experiments.runner import attempts, grid_lock, last_logged_step, plan_cells

CELL = Cell("method-a__seed-0", {"method": "a", "seed": "0"}, "configs/shapes_cpu.py", ("train.seed=0",))


def config(checkpoint_every=2, scorer="shapes", sets=("train",)):
    return SimpleNamespace(
        train=SimpleNamespace(checkpoint_every=checkpoint_every, num_steps=7),
        eval=SimpleNamespace(scorer=scorer, sets=dict.fromkeys(sets), num_prompts=16, samples_per_prompt=2),
    )


def test_a_cell_with_a_scorer_and_fixed_sets_gets_a_final_benchmark(tmp_path):
    seen = []
    plan = plan_cells([CELL], tmp_path, lambda argv: seen.append(argv) or config())[0]
    assert seen[0][-1] == f"--config.train.output_dir={tmp_path / CELL.name}"
    assert plan.num_steps == 7 and plan.run_dir == tmp_path / CELL.name
    (train, argv), (phase, evaluate) = plan.commands()
    assert (train, phase) == ("train", "final_eval")
    assert argv[1:3] == ["-m", "slas_jax.train"]
    assert evaluate[1:4] == ["-m", "slas_jax.evaluate", "--benchmark=shapes"]
    assert f"--run_dir={tmp_path / CELL.name}" in evaluate and "--num_prompts=16" in evaluate
    plain = plan_cells([CELL], tmp_path, lambda argv: config(scorer=None))[0]
    assert [name for name, _ in plain.commands()] == ["train"]


def test_cells_that_could_not_resume_or_do_not_parse_are_refused_naming_the_cell(tmp_path):
    with pytest.raises(ConfigError, match=r"grid cell method-a__seed-0: train.checkpoint_every is 0"):
        plan_cells([CELL], tmp_path, lambda argv: config(checkpoint_every=0))

    def bad(argv):
        raise ConfigError("config.advantage.method: unknown method 'ppo'")

    with pytest.raises(ConfigError, match=r"^grid cell method-a__seed-0: config.advantage.method: unknown"):
        plan_cells([CELL], tmp_path, bad)


def test_the_last_step_of_a_metrics_file_being_written(tmp_path):
    assert last_logged_step(tmp_path) == -1
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "reward_mean": 0.5}\n{"step": 2, "rew')
    assert last_logged_step(tmp_path) == 1


def test_one_runner_per_grid_folder(tmp_path: Path):
    with (
        grid_lock(tmp_path),
        pytest.raises(UserError, match="another runner is working on"),
        grid_lock(tmp_path),
    ):
        pass
    with grid_lock(tmp_path):  # released when its holder is done
        pass


def test_the_sections_of_a_cells_log(tmp_path):
    (tmp_path / "train.log").write_text(
        "\n=== 2026-01-01 10:00:00 train: -m slas_jax.train --config x\nGRPO 1/4\n"
        "\n=== 2026-01-01 10:05:00 train: -m slas_jax.train --config x\nresumed from step 2 in y\n"
        "\n=== 2026-01-01 10:09:00 final_eval: -m slas_jax.evaluate --benchmark=shapes\ndone: 512 images\n"
    )
    found = attempts(tmp_path)
    assert [phase for phase, _ in found] == ["train", "train", "final_eval"]
    assert "resumed from step 2" in found[1][1] and "resumed" not in found[0][1]
