"""Grid configs expand into cells (one set of train CLI overrides each); grid.json refuses a changed grid."""

import json
import runpy
from pathlib import Path

import pytest

from slas_jax.errors import ConfigError
from slas_jax.experiments.grid import GRID_JSON, check_record, expand, grid_record

ROOT = Path(__file__).resolve().parents[2]


def small_grid(**changes):
    grid = {
        "base": "configs/shapes_cpu.py",
        "overrides": ("train.num_steps=5", "train.checkpoint_every=1"),
        "axes": {
            "method": {
                "dance": {"overrides": ("advantage.method=dance_grpo",)},
                "slas_g2": {"overrides": ("advantage.method=slas", "advantage.gamma=2")},
            },
            "backbone": {"flow": {"variant": "flow"}, "unet": {"variant": "unet"}},
            "seed": {"0": {"overrides": ("train.seed=0",)}, "1": {"overrides": ("train.seed=1",)}},
        },
        "order": ("seed", "backbone", "method"),
    }
    grid.update(changes)
    return grid


def test_the_whole_product_in_order_slowest_axis_first():
    cells = expand(small_grid())
    assert [c.name for c in cells[:3]] == [
        "seed-0__backbone-flow__method-dance",
        "seed-0__backbone-flow__method-slas_g2",
        "seed-0__backbone-unet__method-dance",
    ]
    assert len(cells) == 8
    cell = cells[3]
    assert cell.labels == {"seed": "0", "backbone": "unet", "method": "slas_g2"}
    assert cell.config == "configs/shapes_cpu.py:unet"
    assert cell.overrides == (
        "train.num_steps=5",
        "train.checkpoint_every=1",
        "train.seed=0",
        "advantage.method=slas",
        "advantage.gamma=2",
    )
    assert cell.train_args(Path("out/x"))[:2] == ["--config", "configs/shapes_cpu.py:unet"]
    assert cell.train_args(Path("out/x"))[-1] == "--config.train.output_dir=out/x"


def test_blocks_take_a_union_of_products_without_repeats():
    blocks = ({"backbone": ("flow",)}, {"backbone": ("unet",), "method": ("dance",)}, {"backbone": ("flow",)})
    names = [c.name for c in expand(small_grid(blocks=blocks))]
    assert len(names) == 6 == len(set(names))
    assert "seed-1__backbone-unet__method-slas_g2" not in names
    assert names[:2] == ["seed-0__backbone-flow__method-dance", "seed-0__backbone-flow__method-slas_g2"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"order": ("seed", "method")}, "grid order: must name every axis once"),
        ({"blocks": ({"method": ("ppo",)},)}, "grid blocks[0].method: unknown labels ['ppo']"),
        ({"blocks": ({"size": ("big",)},)}, "grid blocks[0]: unknown axes ['size']"),
        ({"overrides": ("train.output_dir=x",)}, "train.output_dir is set by the runner"),
        ({"overrides": ("num_steps",)}, "each override is a 'section.key=value' string"),
        ({"base": ""}, "grid base: name the training config file"),
    ],
)
def test_bad_grids_are_refused_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=None) as error:
        expand(small_grid(**changes))
    assert message in str(error.value)


def test_a_changed_grid_is_refused_in_one_line_naming_the_change(tmp_path):
    grid = small_grid()
    check_record(tmp_path, grid_record(grid, expand(grid)), allow_changes=False)
    check_record(tmp_path, grid_record(grid, expand(grid)), allow_changes=False)  # the same grid: fine
    changed = small_grid(overrides=("train.num_steps=6", "train.checkpoint_every=1"))
    changed["axes"]["seed"]["2"] = {"overrides": ("train.seed=2",)}
    with pytest.raises(ConfigError) as error:
        check_record(tmp_path, grid_record(changed, expand(changed)), allow_changes=False)
    line = str(error.value)
    assert "\n" not in line
    assert line.startswith(
        f"the grid in {tmp_path} changed since grid.json was written: cells added: seed-2__"
    )
    assert "overrides changed" in line and "--allow-changed-grid" in line
    check_record(tmp_path, grid_record(changed, expand(changed)), allow_changes=True)
    assert len(json.loads((tmp_path / GRID_JSON).read_text())["cells"]) == 12


def test_paper_claims_grid_covers_the_issue():
    """configs/experiments/paper_claims.py: every method of the issue (DanceGRPO with its eps), SLAS at
    gamma 0.5 / 1 / 2 and both orders at 1, 3 seeds, 150 steps, a higher learning rate and the UNet."""
    grid = runpy.run_path(str(ROOT / "configs/experiments/paper_claims.py"))["get_config"]().to_dict()
    cells = expand(grid)
    methods = {c.labels["method"] for c in cells}
    assert methods >= {"dance_grpo", "mean_only", "flow_grpo", "flow_grpo_per_prompt"}
    assert {"slas_g0_5", "slas_g1", "slas_g2", "slas_g1_before"} <= methods
    dance = next(c for c in cells if c.labels["method"] == "dance_grpo")
    assert "advantage.eps=1e-08" in dance.overrides or "advantage.eps=1e-8" in dance.overrides
    assert {c.labels["seed"] for c in cells} >= {"0", "1", "2"}
    assert "train.num_steps=150" in grid["overrides"]
    assert {c.labels["backbone"] for c in cells} == {"flow", "unet"}
    assert len({c.labels["lr"] for c in cells}) == 2
