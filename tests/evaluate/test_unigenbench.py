"""The UniGenBench++ export against CodeGoat24/UniGenBench's eval_data layout: the CSVs' official headers
(``index,prompt_en,sub_dims_en`` / ``index,prompt_zh,sub_dims_zh``, sub_dims JSON as in data/*.csv) and the
check its eval/src/eval_common.py makes before scoring (every ``<data_path>/<index>_<j>.png`` exists)."""

import csv
import json
import os

import pytest
from cli_runner import one_line_error, run_module
from evaluate_runner import CONFIG, POLICY, evaluate, snapshot
from PIL import Image

from slas_jax.errors import ConfigError, UserError
from slas_jax.evaluate import unigenbench

pytestmark = pytest.mark.slow

SUB_DIMS_EN = {
    "Primary Categories": "Creative Divergence",
    "Secondary Categories": "Imaginative Thinking",
    "Subjects": "Animal",
    "Sentence Structure": "Descriptive",
    "Testpoints": ["Attribute - Color", "Attribute - Quantity"],
    "Testpoint Description": ["red", "two"],
}
SUB_DIMS_ZH = {
    "一级垂类": "创意发散",
    "二级垂类": "想象力发散",
    "主体": "动物",
    "考点": ["属性-颜色"],
    "句式": "描述式",
    "考点对应描述": ["红色"],
}
ROWS_EN = [(0, "a red circle"), (1, "two blue squares"), (2, "a green triangle above a circle")]


def write_csv(path, header, rows, sub_dims):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([index, prompt, json.dumps(sub_dims, ensure_ascii=False)] for index, prompt in rows)
    return path


def official_check(data_path, csv_file, images_per_prompt=4):
    """eval_common.run_evaluation's image loop: raises FileNotFoundError on the first missing image."""
    paths = []
    with open(csv_file, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for j in range(images_per_prompt):
                img_path = os.path.join(data_path, f"{int(row['index'])}_{j}.png")
                if not os.path.exists(img_path):
                    raise FileNotFoundError(f"Image not found: {img_path}")
                paths.append(img_path)
    return paths


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unigenbench")
    csv_file = write_csv(
        folder / "test_prompts_en.csv", ["index", "prompt_en", "sub_dims_en"], ROWS_EN, SUB_DIMS_EN
    )
    out = folder / "eval_data"
    code = evaluate(
        "--benchmark",
        "unigenbench",
        "--prompts",
        csv_file,
        "--out",
        out,
        "--model_name",
        "shapes-flow",
        "--policy",
        POLICY,
    )
    assert code == 0
    return csv_file, out


def test_layout_is_what_the_evaluator_reads(export):
    csv_file, out = export
    data_path = out / "en" / "shapes-flow"
    paths = official_check(data_path, csv_file)
    assert len(paths) == 12
    assert sorted(p.name for p in data_path.iterdir()) == sorted(
        [f"{i}_{j}.png" for i, _ in ROWS_EN for j in range(4)] + ["manifest.json"]
    )
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    manifest = json.loads((data_path / "manifest.json").read_text())
    assert (manifest["category"], manifest["images"], manifest["images_present"]) == ("en", 12, 12)


def test_missing_image_is_refused_in_one_line(export, tmp_path):
    csv_file, out = export
    data_path = out / "en" / "shapes-flow"
    before = snapshot(data_path)
    (data_path / "1_2.png").unlink()
    try:
        with pytest.raises(FileNotFoundError):
            official_check(data_path, csv_file)
        result = run_module(
            "slas_jax.evaluate",
            "--benchmark",
            "unigenbench",
            "--config",
            CONFIG,
            "--prompts",
            csv_file,
            "--out",
            out,
            "--model_name",
            "shapes-flow",
            "--check_only",
        )
        line = one_line_error(result)
        assert "1 of 12 unigenbench images are missing or damaged" in line and "1_2.png" in line
    finally:
        assert (
            evaluate(
                "--benchmark",
                "unigenbench",
                "--prompts",
                csv_file,
                "--out",
                out,
                "--model_name",
                "shapes-flow",
                "--policy",
                POLICY,
            )
            == 0
        )
    assert snapshot(data_path)["1_2.png"][1] == before["1_2.png"][1]


def test_category_language_and_columns(tmp_path):
    zh = write_csv(
        tmp_path / "test_prompts_zh_long.csv",
        ["index", "prompt_zh", "sub_dims_zh"],
        [(5, "红色的圆")],
        SUB_DIMS_ZH,
    )
    category = unigenbench.category_of(zh, None)
    assert category == "zh_long"
    (record,) = unigenbench.read_prompts(zh, category)
    assert record.prompt == "红色的圆" and record.metadata["index"] == 5
    assert [job.path.name for job in unigenbench.jobs(tmp_path, [record], 4)] == [
        f"5_{j}.png" for j in range(4)
    ]
    en = write_csv(
        tmp_path / "test_prompts_en.csv", ["index", "prompt_en", "sub_dims_en"], ROWS_EN, SUB_DIMS_EN
    )
    assert [r.prompt for r in unigenbench.read_prompts(en, "en")] == [prompt for _, prompt in ROWS_EN]
    with pytest.raises(UserError, match="no column 'prompt_zh'"):
        unigenbench.read_prompts(en, "zh")
    with pytest.raises(ConfigError, match="--category"):
        unigenbench.category_of(tmp_path / "prompts.csv", None)
    assert unigenbench.category_of(tmp_path / "prompts.csv", "en") == "en"
    with pytest.raises(ConfigError, match="--model_name"):
        unigenbench.image_folder(tmp_path, "en", "a/b")
