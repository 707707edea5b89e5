"""Checkpoints restore exactly, onto a different mesh, and a resumed run continues bit-for-bit."""

import jax
import numpy as np
from engine_harness import flat, run_step

from slas_jax.checkpoint import Checkpointer


def test_resume_after_preemption_continues_exactly(tmp_path):
    straight, _ = run_step({}, steps=2)
    first, _ = run_step({}, steps=1, devices=2)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(first, {"run": "test"})
    assert checkpointer.latest_step() == 1
    template, _ = run_step({}, steps=0, devices=8)
    restored, extra = checkpointer.restore(template, jax.tree.map(lambda x: x.sharding, template))
    assert extra == {"run": "test"} and int(restored.step) == 1 and int(restored.data_index) == 2
    np.testing.assert_array_equal(flat(restored.opt_state), flat(first.opt_state))
    assert len(jax.tree.leaves(restored.params)[0].sharding.device_set) == 8
    resumed, _ = run_step({}, steps=1, state=restored)
    np.testing.assert_allclose(flat(resumed.params), flat(straight.params), rtol=1e-5, atol=1e-7)
