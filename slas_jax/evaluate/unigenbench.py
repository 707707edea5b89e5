"""UniGenBench++'s image folder, as its evaluation scripts (CodeGoat24/UniGenBench, eval/eval_gemini.sh,
eval/eval_vllm.sh -> eval/src/eval_common.py) read it::

    <eval_data_dir>/<category>/<model>/<index>_<j>.png    j = 0 .. images_per_prompt - 1 (4 by default)

``category`` is one of en, en_long, zh, zh_long, read from ``data/test_prompts_<category>.csv``; the
language is its prefix and chooses the CSV's columns (``prompt_en`` / ``sub_dims_en`` or ``prompt_zh`` /
``sub_dims_zh``); ``index`` is the CSV's ``index`` column; ``model`` is the name the scripts' ``--model``
takes. The scripts raise on the first missing image, so the export refuses to report success while one is
missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from slas_jax.data.prompts import PromptRecord, read_unigenbench_csv
from slas_jax.errors import ConfigError, UserError
from slas_jax.evaluate.driver import ImageJob

CATEGORIES = ("en", "en_long", "zh", "zh_long")
CSV_NAME = re.compile(r"test_prompts_(en|en_long|zh|zh_long)\.csv")


def category_of(csv_path: str | Path, category: str | None) -> str:
    """``category`` when given (checked), else the one the official file name names
    (``test_prompts_<category>.csv``); ConfigError when neither says."""
    if category:
        if category not in CATEGORIES:
            raise ConfigError(f"--category {category!r} is not one of {', '.join(CATEGORIES)}")
        return category
    match = CSV_NAME.fullmatch(Path(csv_path).name)
    if match is None:
        raise ConfigError(
            f"cannot tell the UniGenBench++ category from the file name {Path(csv_path).name!r}; pass "
            f"--category ({', '.join(CATEGORIES)})"
        )
    return match.group(1)


def read_prompts(csv_path: str | Path, category: str) -> list[PromptRecord]:
    """The CSV's rows with the prompt of the category's language; UserError naming the file when it lacks
    the columns the evaluator reads or an ``index`` is not a distinct integer."""
    lang = category.split("_")[0]
    try:
        records = read_unigenbench_csv(csv_path, f"prompt_{lang}")
    except ValueError as e:
        raise UserError(str(e)) from e
    needed = ("index", f"sub_dims_{lang}")
    for column in needed:
        if column not in records[0].metadata:
            raise UserError(
                f"{csv_path} has no column {column!r}, which UniGenBench++'s {lang} evaluation reads"
            )
    indices = [record.metadata["index"] for record in records]
    if not all(isinstance(i, int) and i >= 0 for i in indices) or len(set(indices)) != len(indices):
        raise UserError(f"{csv_path}: the 'index' column must hold distinct integers >= 0")
    return records


def image_folder(out: Path, category: str, model_name: str) -> Path:
    """``<out>/<category>/<model_name>``: what ``--eval_data_dir <out> --model <model_name>`` reads."""
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise ConfigError(
            f"--model_name {model_name!r}: give the name (one folder, no '/') the evaluator's --model takes"
        )
    return out / category / model_name


def jobs(folder: Path, records: Sequence[PromptRecord], images_per_prompt: int) -> list[ImageJob]:
    """Image j of the prompt with CSV index i at ``<folder>/<i>_<j>.png``, seeded by i."""
    return [
        ImageJob(r.metadata["index"], j, r.prompt, folder / f"{r.metadata['index']}_{j}.png")
        for r in records
        for j in range(images_per_prompt)
    ]
