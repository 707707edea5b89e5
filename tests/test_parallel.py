"""Placing parameters and batches on a mesh: the rules table (``config.mesh.rules``), the start-up line
naming every parameter that stays replicated, and a process's rows of a global batch."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest
from engine_harness import PARAMS

from slas_jax import parallel
from slas_jax.data import load_rows
from slas_jax.errors import ConfigError
from slas_jax.testbed.brightness import BrightnessPrompts
from slas_jax.train import parse_config

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "brightness_cpu.py")


def mesh(data, fsdp, tensor):
    return parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)


def test_the_report_names_each_parameter_whose_axis_does_not_divide_with_its_size():
    # The harness model: conv_in (3, 3, 3, 16), time (1, 16), text (4, 16), conv_out (3, 3, 16, 3).
    line = parallel.replication_report(PARAMS, mesh(1, 4, 2))
    assert line == (
        "replicated (axis does not divide): 4 parameters, 3.5 KB: "
        "conv_in.kernel (1.7 KB, conv_in=3 on fsdp=4), conv_out.kernel (1.7 KB, conv_out=3 on tensor=2), "
        "time.kernel (64 B, embed=1 on fsdp=4), conv_out.bias (12 B, conv_out=3 on tensor=2)"
    )


def test_a_taken_mesh_axis_is_reported_and_size_one_axes_are_not():
    rules = (("embed", "fsdp"), ("mlp", "fsdp"), ("conv_in", None), ("conv_out", None))
    line = parallel.replication_report(PARAMS, mesh(2, 4, 1), rules)
    assert line == (
        "replicated (axis does not divide / axis taken): 2 parameters, 320 B: "
        "text.kernel (256 B, mlp=16 on fsdp=4), time.kernel (64 B, embed=1 on fsdp=4)"
    )
    assert parallel.replication_report(PARAMS, mesh(8, 1, 1)) == ""


def test_the_rules_place_the_parameters():
    text_kernel = parallel.state_shardings(PARAMS, mesh(1, 4, 2))["text"]["kernel"].get_value()
    assert text_kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    swapped = (("embed", "tensor"), ("mlp", "fsdp"))
    text_kernel = parallel.state_shardings(PARAMS, mesh(1, 4, 2), swapped)["text"]["kernel"].get_value()
    assert text_kernel.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "--config.mesh.rules=(('embed','model'),)",
            "config.mesh.rules: 'embed' maps to unknown mesh axis 'model'; use one of data, fsdp, tensor or None",
        ),
        ("--config.mesh.rules=(('embed','fsdp'),('embed',None))", "config.mesh.rules: 'embed' has two rules"),
        ("--config.mesh.rules=(('embed',),)", "config.mesh.rules: each rule is a (logical axis, mesh axis"),
    ],
    ids=["unknown mesh axis", "two rules", "not a pair"],
)
def test_bad_rules_are_refused_in_one_line(override, expected):
    with pytest.raises(ConfigError, match="^" + re.escape(expected)) as error:
        parse_config(["train", "--config", CONFIG, override])
    assert "\n" not in str(error.value)


def test_the_default_rules_come_from_the_config():
    config = parse_config(["train", "--config", CONFIG])
    assert config.mesh.rules == parallel.DEFAULT_RULES


def test_one_process_holds_every_row_and_the_global_batch_is_the_host_batch():
    m = mesh(2, 4, 1)
    assert parallel.process_rows(m, 16) == [(0, 16)]
    host = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "y": np.arange(3)}
    batch = parallel.global_batch(m, {"x": host["x"]}, 16)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch["x"]), host["x"])
    # A batch that does not divide over data x fsdp is replicated: every process holds all of it.
    assert parallel.process_rows(m, 3) == [(0, 3)]
    assert parallel.global_batch(m, {"y": host["y"]}, 3)["y"].sharding.is_fully_replicated


def test_a_process_reads_its_rows_of_the_batch_as_one_process_reads_them():
    source = BrightnessPrompts()
    whole_texts, whole = source.batch(7, 8)
    texts, arrays = load_rows(source, 7, [(0, 2), (5, 8)])
    assert texts == whole_texts[:2] + whole_texts[5:]
    np.testing.assert_array_equal(
        arrays["region"], np.concatenate([whole["region"][:2], whole["region"][5:]])
    )
