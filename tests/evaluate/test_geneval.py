"""The GenEval export against djghosh13/geneval's layout: what generation/diffusers_generate.py writes and
evaluation/evaluate_images.py reads (its folder walk is reproduced here), on three prompts whose metadata
lines have the official file's structure (key order tag, include, exclude, prompt; positions as
[relation, index])."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from evaluate_runner import POLICY, evaluate, snapshot
from PIL import Image

from slas_jax.evaluate import geneval

pytestmark = pytest.mark.slow

METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"},
    {
        "tag": "counting",
        "include": [{"class": "square", "count": 2}],
        "exclude": [{"class": "square", "count": 3}],
        "prompt": "two squares",
    },
    {
        "tag": "position",
        "include": [
            {"class": "triangle", "count": 1},
            {"class": "circle", "count": 1, "position": ["left of", 0]},
        ],
        "prompt": "a circle left of a triangle",
    },
]


def official_walk(imagedir: Path) -> list[tuple[str, dict]]:
    """evaluate_images.py's main loop: numbered folders, ``json.load`` of metadata.jsonl, \\d+.png samples."""
    found = []
    for subfolder in os.listdir(imagedir):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for imagename in os.listdir(os.path.join(folderpath, "samples")):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if os.path.isfile(imagepath) and re.match(r"\d+\.png", imagename):
                found.append((imagepath, metadata))
    return sorted(found, key=lambda item: item[0])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(metadata file, output folder, the first run's files) after one export of 4 images per prompt."""
    folder = tmp_path_factory.mktemp("geneval")
    metadata_file = folder / "evaluation_metadata.jsonl"
    metadata_file.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    out = folder / "images"
    assert (
        evaluate("--benchmark", "geneval", "--prompts", metadata_file, "--out", out, "--policy", POLICY) == 0
    )
    return metadata_file, out, snapshot(out)


def run_again(export) -> None:
    metadata_file, out, _ = export
    assert (
        evaluate("--benchmark", "geneval", "--prompts", metadata_file, "--out", out, "--policy", POLICY) == 0
    )


def test_layout_is_the_official_one(export):
    metadata_file, out, files = export
    expected = {
        f"{i:05d}/{name}"
        for i in range(3)
        for name in ["metadata.jsonl", "grid.png", *(f"samples/{n:05d}.png" for n in range(4))]
    }
    assert set(files) == expected
    lines = metadata_file.read_text().splitlines()
    for i, line in enumerate(lines):
        # The official script's json.dump of the parsed line: the line itself, without its newline.
        assert (out / f"{i:05d}" / "metadata.jsonl").read_text() == line
    walked = official_walk(out)
    assert len(walked) == 12
    assert [m for _, m in walked] == [m for m in METADATA for _ in range(4)]
    for path, _ in walked:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    samples = [np.asarray(Image.open(out / "00001" / "samples" / f"{n:05d}.png")) for n in range(4)]
    assert len({s.tobytes() for s in samples}) == 4  # every image its own noise
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00001" / "grid.png")), geneval.grid(samples))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["prompts"], manifest["images"], manifest["images_present"]) == (3, 12, 12)
    assert manifest["images_per_prompt"] == 4 and manifest["seed"] == 0
    assert manifest["model"]["source"]["path"] == POLICY
    assert "--benchmark geneval" in manifest["command"]


def test_grid_is_make_grid_of_one_column():
    cells = [np.full((3, 5, 3), v, np.uint8) for v in (10, 20)]
    out = geneval.grid(cells)
    assert out.shape == (2 * (3 + 2) + 2, 5 + 4, 3)
    assert np.all(out[2:5, 2:7] == 10) and np.all(out[7:10, 2:7] == 20)
    assert out.sum() == (10 + 20) * 3 * 5 * 3  # black padding everywhere else


def test_second_run_writes_nothing(export):
    before = snapshot(export[1])
    run_again(export)
    assert snapshot(export[1]) == before


def test_deleted_and_damaged_images_are_regenerated_identically(export, capsys):
    _, out, files = export
    before = snapshot(out)
    deleted, damaged = "00000/samples/00002.png", "00002/samples/00001.png"
    (out / deleted).unlink()
    (out / damaged).write_bytes(files[damaged][1][:100])  # a truncated PNG
    run_again(export)
    assert "00001.png: does not decode" in capsys.readouterr().err
    now = snapshot(out)
    for name in (deleted, damaged):
        assert now[name][1] == files[name][1]
    # The grids of the two prompts were rewritten (same pixels); the other prompt's files were not touched.
    assert now["00000/grid.png"][1] == files["00000/grid.png"][1]
    assert now["00000/grid.png"][0] != before["00000/grid.png"][0]
    assert {k: v for k, v in now.items() if k.startswith("00001/")} == {
        k: v for k, v in before.items() if k.startswith("00001/")
    }


def test_check_only_wants_every_metadata_file(export, capsys):
    metadata_file, out, files = export
    check = ("--benchmark", "geneval", "--prompts", metadata_file, "--out", out, "--check_only")
    assert evaluate(*check) == 0
    (out / "00001" / "metadata.jsonl").unlink()
    assert evaluate(*check) == 2
    assert "1 geneval files are missing (first: " in capsys.readouterr().err
    run_again(export)
    assert (out / "00001" / "metadata.jsonl").read_bytes() == files["00001/metadata.jsonl"][1]
    assert evaluate(*check) == 0
