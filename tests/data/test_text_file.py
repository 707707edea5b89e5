"""Prompt source "text_file": every line served once per epoch, seeded and resumable, one-line errors."""

import pytest

from slas_jax.config import ConfigError, DataConfig
from slas_jax.data import SOURCES, build_prompt_source
from slas_jax.data.text_file import prompt_set_name

LINES = [f"a photo of object number {i}" for i in range(7)]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "HPDv2 train.txt"
    # Blank lines and surrounding whitespace are dropped, as HPDv2's files sometimes end with an empty line.
    path.write_text("\n".join(f"  {line} " for line in LINES[:3]) + "\n\n" + "\n".join(LINES[3:]) + "\n")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def source(path, data_dir, **options):
    return build_prompt_source(
        DataConfig(name="text_file", options={"path": str(path), "data_dir": str(data_dir), **options})
    )


def test_every_prompt_once_per_epoch_in_a_seeded_order(prompt_file, data_dir):
    assert "text_file" in SOURCES
    stream = source(prompt_file, data_dir, seed=3)
    first, arrays = stream.batch(0, 7)
    assert arrays == {}
    assert sorted(first) == sorted(LINES) and first != LINES  # a permutation, not the file order
    second, _ = stream.batch(7, 7)
    assert sorted(second) == sorted(LINES) and second != first  # the next epoch is reshuffled
    assert set(stream.vocabulary) == {"a", "photo", "of", "object", "number", *map(str, range(7))}
    stored = list((data_dir / "prompt_set").iterdir())
    assert [p.name for p in stored] == [prompt_set_name(prompt_file)]
    assert prompt_set_name(prompt_file).startswith("text_hpdv2_train_")


def test_batches_are_addressed_by_position_so_runs_resume(prompt_file, data_dir):
    whole = source(prompt_file, data_dir, seed=3)
    resumed = source(prompt_file, data_dir, seed=3)  # a new process reading the stored set
    straight = [p for start in range(0, 12, 3) for p in whole.batch(start, 3)[0]]
    assert resumed.batch(6, 3)[0] == straight[6:9]
    assert straight[:7] == whole.batch(0, 7)[0]
    assert source(prompt_file, data_dir, seed=4).batch(0, 7)[0] != whole.batch(0, 7)[0]


def test_bad_files_fail_with_one_line(tmp_path, data_dir):
    with pytest.raises(
        FileNotFoundError, match=r"prompt file .*missing\.txt does not exist; config\.data\.options\.path"
    ):
        source(tmp_path / "missing.txt", data_dir)
    with pytest.raises(ConfigError, match=r"config\.data\.options\.path: set it to a text file"):
        build_prompt_source(DataConfig(name="text_file", options={}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="has no prompts; expected one prompt per line"):
        source(empty, data_dir)
    # A file edited after its set was stored would put other prompts at the same stream positions.
    edited = tmp_path / "edited.txt"
    edited.write_text("one\ntwo\n")
    source(edited, data_dir)
    edited.write_text("one\nthree\n")
    with pytest.raises(ConfigError, match="built from other prompts; delete that folder"):
        source(edited, data_dir)
    with pytest.raises(
        ConfigError, match=r"config\.data\.options\.prompts: unknown option; valid options here are path"
    ):
        build_prompt_source(DataConfig(name="text_file", options={"prompts": "x"}))
