"""Checkpoints restore exactly, onto a different mesh, and a resumed run continues bit-for-bit; a damaged
newest checkpoint is detected by its checksums and the previous intact one is restored instead."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from engine_harness import flat, run_step

from slas_jax.checkpoint import MANIFEST, Checkpointer, CheckpointError, as_path
from slas_jax.grpo import TrainState


def test_resume_after_preemption_continues_exactly(tmp_path):
    straight, _ = run_step({}, steps=2)
    first, _ = run_step({}, steps=1, devices=2)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(first, {"run": "test"})
    checkpointer.wait()
    assert checkpointer.latest_step() == 1
    template, _ = run_step({}, steps=0, devices=8)
    restored, extra = checkpointer.restore(template, jax.tree.map(lambda x: x.sharding, template))
    assert extra == {"run": "test"} and int(restored.step) == 1 and int(restored.data_index) == 2
    np.testing.assert_array_equal(flat(restored.opt_state), flat(first.opt_state))
    assert len(jax.tree.leaves(restored.params)[0].sharding.device_set) == 8
    resumed, _ = run_step({}, steps=1, state=restored)
    np.testing.assert_allclose(flat(resumed.params), flat(straight.params), rtol=1e-5, atol=1e-7)


def tiny_state(step: int) -> TrainState:
    """A train state of a few small arrays whose values say which step wrote them."""
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params={"w": jnp.full((64, 64), float(step))},
        opt_state={"mu": jnp.full((8,), 0.5 * step)},
        rng=jax.random.PRNGKey(step),
        data_index=jnp.asarray(2 * step, jnp.int32),
        ref_params=None,
        frozen={},
    )


def restore_tiny(checkpointer: Checkpointer) -> TrainState:
    template = tiny_state(0)
    return checkpointer.restore(template, jax.tree.map(lambda x: x.sharding, template))[0]


def saved(folder, steps, **options) -> Checkpointer:
    checkpointer = Checkpointer(folder, **options)
    for step in steps:
        checkpointer.save(tiny_state(step), {"step": step})
    checkpointer.wait()
    return checkpointer


def largest_file(folder):
    return max(
        (p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size
    )


def flip_byte(step_dir):
    path = largest_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(step_dir):
    path = largest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite(step_dir):
    path = largest_file(step_dir)
    path.write_bytes(bytes(path.stat().st_size))


def remove_state(step_dir):
    import shutil

    shutil.rmtree(step_dir / "state")


def remove_manifest(step_dir):
    (step_dir / MANIFEST).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (flip_byte, "does not match its sha256"),
        (truncate, "bytes,"),
        (overwrite, "does not match its sha256"),
        (remove_state, "state/"),
        (remove_manifest, f"no {MANIFEST}"),
    ],
)
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage, reason):
    checkpointer = saved(tmp_path / "ckpt", (1, 2))
    damage(tmp_path / "ckpt" / "2")
    step, damaged = checkpointer.newest_intact()
    assert step == 1 and [d.step for d in damaged] == [2]
    assert reason in damaged[0].line() and damaged[0].line().startswith("checkpoint 2 is damaged: ")
    assert int(restore_tiny(checkpointer).step) == 1
    moved = checkpointer.set_aside(damaged)
    assert (moved / "2").is_dir() and checkpointer.steps() == [1]
    checkpointer.save(tiny_state(2), {"step": 2})  # the step is saved again where the damaged one was
    checkpointer.close()
    assert Checkpointer(tmp_path / "ckpt").newest_intact() == (2, [])


def test_an_empty_newer_step_folder_is_skipped(tmp_path):
    checkpointer = saved(tmp_path / "ckpt", (1, 2))
    (tmp_path / "ckpt" / "7").mkdir()
    checkpointer.manager.reload()
    step, damaged = checkpointer.newest_intact()
    assert step == 2 and [(d.step, d.reason) for d in damaged] == [(7, "the folder is empty")]
    np.testing.assert_array_equal(restore_tiny(checkpointer).params["w"], tiny_state(2).params["w"])


@pytest.mark.parametrize(
    "change",
    [{"params": {"w": jnp.zeros((64, 65))}}, {"ref_params": {"w": jnp.zeros((64, 64))}}],
    ids=["wider model", "KL turned on"],
)
def test_a_checkpoint_whose_arrays_do_not_fit_is_one_line(tmp_path, change):
    checkpointer = saved(tmp_path / "ckpt", (1,))
    other = tiny_state(0).replace(**change)
    with pytest.raises(CheckpointError, match=r"checkpoint 1 in .* does not fit this run's train state") as e:
        checkpointer.restore(other, jax.tree.map(lambda x: x.sharding, other))
    assert "\n" not in str(e.value)


def test_keep_checkpoints_and_keep_best(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2, best_metric="score", best_mode="max")
    for step, score in ((1, 0.1), (2, 0.9), (3, None), (4, 0.2), (5, 0.3)):
        checkpointer.save(tiny_state(step), {}, None if score is None else {"score": score, "other": 1.0})
    checkpointer.close()
    assert Checkpointer(tmp_path / "ckpt").steps() == [5, 4, 2]
    lowest = Checkpointer(tmp_path / "low", keep=1, best_metric="score", best_mode="min")
    for step, score in ((1, 0.5), (2, 0.1), (3, 0.7)):
        lowest.save(tiny_state(step), {}, {"score": score})
    lowest.close()
    assert Checkpointer(tmp_path / "low").steps() == [3, 2]


def test_saving_is_sealed_in_the_background_and_its_errors_surface(tmp_path, monkeypatch):
    checkpointer = saved(tmp_path / "ckpt", (1,))
    listed = json.loads((tmp_path / "ckpt" / "1" / MANIFEST).read_text())["files"]
    assert any(name.startswith("state/") for name in listed) and all(
        len(f["sha256"]) == 64 for f in listed.values()
    )

    def failing(_folder):
        raise OSError("disk full")

    monkeypatch.setattr("slas_jax.checkpoint.seal", failing)
    checkpointer.save(tiny_state(2), {})
    with pytest.raises(OSError, match="disk full"):
        checkpointer.wait()


def test_remote_paths_are_kept_intact(tmp_path, monkeypatch):
    assert str(as_path("gs://bucket/runs/a") / "checkpoints") == "gs://bucket/runs/a/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(as_path("runs/a")) == str(tmp_path / "runs" / "a")


def test_no_intact_checkpoint_names_what_is_broken(tmp_path):
    checkpointer = saved(tmp_path / "ckpt", (1,))
    flip_byte(tmp_path / "ckpt" / "1")
    assert checkpointer.newest_intact()[0] is None
    with pytest.raises(FileNotFoundError, match="no intact checkpoint"):
        restore_tiny(checkpointer)
