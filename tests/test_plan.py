"""The memory planner (python -m slas_jax.plan): its exact rows agree with XLA's memory analysis of the
compiled step, the published FLUX.1-dev shapes give the published sizes, and --hbm_gib sets the exit code."""

import jax
import jax.numpy as jnp
import pytest
from engine_harness import PARAMS, PIPELINE, brightness, harness_config

from slas_jax import grpo, parallel, placement
from slas_jax.config import load_config
from slas_jax.plan import __main__ as plan_cli
from slas_jax.plan import report
from slas_jax.plan.report import plan_rows
from slas_jax.plan.rows import GIB, Row, gradient_bytes, leaf_bytes, state_rows, total
from slas_jax.plan.step import AbstractRun, compile_step


def test_exact_rows_agree_with_xla_memory_analysis_of_the_compiled_step():
    config = harness_config({"loss": {"kl_beta": 0.1}}, prompts=2)
    mesh = parallel.make_mesh(data=2, fsdp=4, devices=jax.devices()[:8])
    tx = grpo.make_optimizer(config)
    frozen = {"reward": None}
    state = jax.eval_shape(lambda p: grpo.init_train_state(p, frozen, tx, config), PARAMS)
    shardings = grpo.state_shardings(state, placement.tree_shardings(PARAMS, mesh), {"reward": None}, mesh)
    batch = {"onehot": jax.ShapeDtypeStruct((2, 4), jnp.float32)}
    step = grpo.make_train_step(PIPELINE, brightness, tx, config, mesh)
    sizes = compile_step(AbstractRun(state, shardings, batch, step, ()), mesh)

    rows = state_rows(state, shardings, config)
    arguments = total(rows) + sum(
        leaf_bytes(v, parallel.batch_sharding(mesh, v.shape)) for v in batch.values()
    )
    arguments += 8  # the PRNG key, uint32[2]
    assert arguments == pytest.approx(sizes.argument, rel=0.01)
    # The gradient accumulator is one of the step's temporaries.
    assert 0 < gradient_bytes(state, shardings) <= sizes.temp
    planned = arguments + sizes.temp + sizes.output - sizes.alias
    assert planned == pytest.approx(sizes.peak, rel=0.10)
    # Donation: the new state reuses the old one's buffers, so only the metrics are extra outputs.
    assert sizes.output - sizes.alias < 0.05 * sizes.argument


def test_flux_dev_rows_from_the_published_shapes_without_allocating(tmp_path):
    config = load_config(
        {
            "model": {"family": "flux", "checkpoint": str(tmp_path / "absent"), "frozen_dtype": "bfloat16"},
            "sampler": {"name": "dance_flow"},
            "train": {"prompts_per_step": 8, "group_size": 2, "micro_batch_size": 8},
            "mesh": {"fsdp": 8},
        }
    )
    mesh = parallel.make_mesh(data=1, fsdp=8, devices=jax.devices()[:8])
    rows, notes = plan_rows(config, mesh, tmp_path, compiled=False)
    by_name = {r.name: r.bytes for r in rows}
    assert any("published black-forest-labs/FLUX.1-dev" in n for n in notes)
    # FLUX.1-dev: 11.90B float32 parameters, Adam's two moments; T5-v1.1-XXL 4.76B in bfloat16; all split 8
    # ways (a few norm scales stay whole). (HPS's ViT-H-14 is left out: tracing its 56 unstacked layers takes
    # most of a minute.)
    assert by_name["params (trained)"] == pytest.approx(11.901e9 * 4 / 8, rel=0.01)
    assert by_name["optimizer state"] == pytest.approx(2 * by_name["params (trained)"], rel=0.001)
    assert by_name["frozen: t5"] == pytest.approx(4.762e9 * 2 / 8, rel=0.01)
    assert by_name["frozen: clip"] == pytest.approx(0.123e9 * 2 / 8, rel=0.02)
    assert "KL reference" not in by_name


BRIGHTNESS = ["--config", "configs/brightness_cpu.py", "--mesh", "2,2,1"]


def test_hbm_budget_sets_the_exit_code(capsys, monkeypatch):
    # The rows themselves are tested above; here the command line around them, with a 3 GiB plan.
    rows = [Row("params (trained)", GIB, "exact"), Row("activations, other temporaries", 2 * GIB, "compile")]
    monkeypatch.setattr(report, "plan_rows", lambda config, mesh, workdir, compiled: (rows, ("a note",)))
    assert plan_cli.main(["plan", *BRIGHTNESS, "--hbm_gib=4"]) == 0
    out = capsys.readouterr().out
    assert (
        "mesh data=2 fsdp=2 tensor=1" in out
        and "a note" in out
        and "total 3.00 GiB per device, fits 4 GiB" in out
    )
    assert plan_cli.main(["plan", *BRIGHTNESS, "--hbm_gib=2.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: the plan needs 3.00 GiB per device, more than --hbm_gib 2.5 (largest row: activations, other "
        "temporaries, 2.00 GiB); use more devices or a larger mesh.fsdp, model.frozen_dtype=bfloat16, or fewer "
        "samples per micro-batch"
    ]


def test_a_mesh_that_does_not_match_the_devices_is_one_line(capsys):
    assert plan_cli.main(["plan", *BRIGHTNESS, "--devices=8"]) == 2
    assert capsys.readouterr().err.strip() == "error: --mesh 2,2,1 needs 4 devices, --devices says 8"
