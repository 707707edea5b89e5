"""Prompt sets as TFDS array_record datasets, their readers, and the resumable sharded stream."""

import csv
import json
import os

import numpy as np
import pytest

from slas_jax.config import DataConfig
from slas_jax.data import build_prompt_source, prompts
from slas_jax.data.prompts import PromptRecord
from slas_jax.testbed import shapes
from slas_jax.testbed.prompts import shapes_records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def train_source(data_dir):
    return prompts.prompt_source("shapes_train", shapes_records("train"), data_dir)


def test_prompt_set_round_trips_through_tfds(data_dir, train_source):
    records = shapes_records("train")
    assert len(train_source) == len(records) == len(shapes.split_specs("train"))
    rows = train_source.__getitems__(list(range(len(records))))
    assert [row["id"] for row in rows] == list(range(len(records)))
    assert [row["prompt"].decode() for row in rows] == [r.prompt for r in records]
    assert [json.loads(row["metadata"]) for row in rows] == [r.metadata for r in records]
    assert isinstance(train_source[0]["prompt"], bytes)
    assert (data_dir / "prompt_set" / "shapes_train" / "1.0.0" / "dataset_info.json").is_file()


def test_stored_sets_are_reused_and_never_silently_replaced(data_dir, train_source):
    stored = data_dir / "prompt_set" / "shapes_train" / "1.0.0"
    files = {f: os.stat(f).st_mtime_ns for f in stored.iterdir()}
    again = prompts.prompt_source("shapes_train", shapes_records("train"), data_dir)
    assert {f: os.stat(f).st_mtime_ns for f in stored.iterdir()} == files
    assert again[5] == train_source[5]
    with pytest.raises(ValueError, match="built from other prompts; delete that folder"):
        prompts.prompt_source("shapes_train", shapes_records("held_out"), data_dir)
    with pytest.raises(ValueError, match="lowercase letters"):
        prompts.prompt_source("Shapes-Train", shapes_records("train"), data_dir)


def test_readers_turn_user_files_into_records(tmp_path, data_dir):
    lines = tmp_path / "hpdv2.txt"
    lines.write_text("a cat on a mat\n\n  a dog in fog  \n")
    assert prompts.read_prompt_lines(lines) == [
        PromptRecord("a cat on a mat", {}),
        PromptRecord("a dog in fog", {}),
    ]

    geneval = tmp_path / "evaluation_metadata.jsonl"
    entries = [
        {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
         "prompt": "a photo of two clocks"},
        {"tag": "position", "include": [{"class": "bench", "count": 1}, {"class": "dog", "count": 1,
         "position": ["right of", 0]}], "prompt": "a photo of a dog right of a bench"},
    ]  # fmt: skip
    geneval.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    records = prompts.read_geneval_jsonl(geneval)
    assert [r.prompt for r in records] == [e["prompt"] for e in entries]
    assert [r.metadata for r in records] == entries

    csv_file = tmp_path / "test_prompts_en.csv"
    points = {"Primary Categories": "Art", "Testpoints": ["Style", "Attribute - Color"]}
    with csv_file.open("w", newline="") as f:
        csv.writer(f).writerows(
            [["index", "prompt_en", "sub_dims_en"], [0, "A red fox, in ink", json.dumps(points)]]
        )
    (record,) = prompts.read_unigenbench_csv(csv_file)
    assert record == PromptRecord("A red fox, in ink", {"index": 0, "sub_dims_en": points})

    # The same builder stores any of them.
    source = prompts.prompt_source("geneval", records, data_dir)
    assert json.loads(source[1]["metadata"]) == entries[1]


def test_readers_report_bad_files_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"prompt file .* does not exist"):
        prompts.read_prompt_lines(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="has no prompts"):
        prompts.read_prompt_lines(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "include": [{"class": "cat"}]}\n{"prompt": "y"}\n')
    with pytest.raises(ValueError, match="line 2: metadata needs a non-empty 'include' list") as e:
        prompts.read_geneval_jsonl(tmp_path / "bad.jsonl")
    assert "\n" not in str(e.value)
    (tmp_path / "bad.csv").write_text("index,prompt_zh\n0,x\n")
    with pytest.raises(ValueError, match="no column 'prompt_en' \\(columns: index, prompt_zh\\)"):
        prompts.read_unigenbench_csv(tmp_path / "bad.csv")


def test_each_epoch_visits_every_record_once_in_a_seeded_order():
    ids = prompts.stream_records(7, np.arange(21), seed=3)
    epochs = ids.reshape(3, 7)
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3
    np.testing.assert_array_equal(ids, prompts.stream_records(7, np.arange(21), seed=3))
    assert not np.array_equal(ids, prompts.stream_records(7, np.arange(21), seed=4))


def test_a_batch_is_addressed_by_its_stream_position(train_source):
    """A resumed run reads the batch at its data index: the same prompts as a run that never stopped."""
    first = [prompts.batch_at(train_source, 48, 48 * k, seed=0) for k in range(12)]  # 2 epoch boundaries
    assert [b.index for b in first] == list(range(0, 576, 48))
    ids = np.concatenate([b.ids for b in first])
    np.testing.assert_array_equal(ids, prompts.stream_records(len(train_source), np.arange(576), 0))
    again = prompts.batch_at(train_source, 48, first[7].index, seed=0)
    assert again.prompts == first[7].prompts
    assert first[0].prompts == [train_source[int(i)]["prompt"].decode() for i in first[0].ids]
    assert first[0].metadata[0] == json.loads(train_source[int(first[0].ids[0])]["metadata"])


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"batch_size": 0}, "must be positive"), ({"index": -1}, "must be >= 0")]
)
def test_bad_stream_arguments_are_one_clear_line(train_source, kwargs, message):
    arguments = {"batch_size": 16, "index": 0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        prompts.batch_at(train_source, **arguments)


def test_shapes_source_feeds_the_trainer(data_dir):
    source = build_prompt_source(
        DataConfig(name="shapes", options={"split": "held_out", "data_dir": str(data_dir), "seed": 0})
    )
    texts, arrays = source.batch(100, 8)
    assert len(texts) == 8 and arrays["shapes_spec"].shape == (8, shapes.MAX_CLAUSES, shapes.CLAUSE_FIELDS)
    by_prompt = {s.prompt: s for s in shapes.split_specs("held_out")}
    for text, encoded in zip(texts, arrays["shapes_spec"], strict=True):
        decoded = shapes.decode_spec(encoded)
        assert (decoded.include, decoded.exclude) == (by_prompt[text].include, by_prompt[text].exclude)
    assert set(source.vocabulary) >= {w for t in texts for w in t.split()}
    again, _ = source.batch(100, 8)
    assert again == texts
