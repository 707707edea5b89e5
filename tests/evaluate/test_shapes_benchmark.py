"""The shapes benchmark: the config's fixed sets sampled to files and judged by the registered ground truth,
overall and per GenEval category, as the scorer judges the same PNGs."""

import json

import numpy as np
import pytest
from evaluate_runner import POLICY, evaluate

from slas_jax.config import DataConfig
from slas_jax.data import build_prompt_source
from slas_jax.data.geneval import TAGS
from slas_jax.evaluate import shapes_benchmark
from slas_jax.evaluate.fixed_sets import repeat_rows
from slas_jax.scorers import SCORERS

pytestmark = pytest.mark.slow


def test_scores_per_set_and_category(tmp_path):
    out = tmp_path / "shapes"
    code = evaluate(
        "--benchmark",
        "shapes",
        "--out",
        out,
        "--policy",
        POLICY,
        "--num_prompts",
        4,
        "--images_per_prompt",
        2,
    )
    assert code == 0
    results = json.loads((out / "shapes.json").read_text())
    assert sorted(results) == ["held_out", "train"]
    for name, result in results.items():
        assert sorted(p.name for p in (out / name).iterdir()) == [
            f"{p:05d}_{j}.png" for p in range(4) for j in range(2)
        ]
        assert result["prompts"] == 4 and result["all"]["images"] == 8
        # The same numbers as the scorer on the PNGs read back, with the source's own arrays.
        source = build_prompt_source(DataConfig(name="shapes", options={"split": name, "seed": 1}))
        _, arrays = source.batch(0, 4)
        images = shapes_benchmark.read_images(sorted((out / name).iterdir()))
        scores = SCORERS.get("shapes").fn(images, repeat_rows(arrays, 2))
        assert result["all"]["strict"] == float(np.mean(np.asarray(scores["strict"], np.float64)))
        assert result["all"]["partial"] == float(np.mean(np.asarray(scores["partial"], np.float64)))
        categories = result["categories"]
        assert set(categories) <= set(TAGS) and sum(c["images"] for c in categories.values()) == 8
        weighted = sum(c["partial"] * c["images"] for c in categories.values()) / 8
        assert abs(weighted - result["all"]["partial"]) < 1e-9
    table = (out / "shapes.md").read_text().splitlines()
    assert table[0] == "| set | category | images | partial | strict |"
    assert table[2].startswith("| held_out | all | 8 |")


def test_markdown_table():
    results = {
        "s": {
            "all": {"images": 4, "strict": 0.25, "partial": 0.5},
            "categories": {"colors": {"images": 4, "strict": 0.25, "partial": 0.5}},
        }
    }
    assert shapes_benchmark.markdown(results).splitlines()[2:] == [
        "| s | all | 4 | 0.500 | 25.0% |",
        "| s | colors | 4 | 0.500 | 25.0% |",
    ]


def test_each_set_keys_its_own_prompts():
    assert shapes_benchmark.prompt_index("train", 3) != shapes_benchmark.prompt_index("held_out", 3)
    assert shapes_benchmark.prompt_index("train", 3) - shapes_benchmark.prompt_index("train", 0) == 3
    assert 0 <= shapes_benchmark.prompt_index("zz", 2**20 - 1) < 2**32
