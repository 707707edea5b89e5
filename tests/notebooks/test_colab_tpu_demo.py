"""notebooks/colab_tpu_demo.ipynb runs top to bottom (nbclient, a fresh IPython kernel, on CPU) with its
parameters cell replaced by a tiny configuration, and leaves the run's report and GenEval's layout behind."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "colab_tpu_demo.ipynb"
TINY = [
    "--config.train.prompts_per_step=2",
    "--config.train.group_size=2",
    "--config.train.micro_batch_size=4",
    "--config.eval.num_prompts=2",
    "--config.eval.samples_per_prompt=1",
    "--config.eval.grid_prompts=2",
]


def with_parameters(notebook: nbformat.NotebookNode, **values: object) -> nbformat.NotebookNode:
    """The notebook with its cell tagged "parameters" replaced by ``NAME = repr(value)`` lines (papermill's
    convention); every name must already be a parameter there."""
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
    assert set(values) <= names, set(values) - names
    cell.source += "\n" + "\n".join(f"{name} = {value!r}" for name, value in values.items())
    return notebook


def test_notebook_runs_on_cpu(tmp_path):
    notebook = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        VARIANT="truth",
        STEPS=1,
        OVERRIDES=TINY,
        RUN_DIR=str(tmp_path / "run"),
        GENEVAL_PROMPTS=2,
        GENEVAL_DIR=str(tmp_path / "geneval"),
    )
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    # One CPU device, and XLA:CPU's cheapest compilation: the run's train step dominates the test, and a
    # smoke test of the notebook needs it to run, not to run fast (about 30% less CPU time).
    flags = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    client.execute(
        env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} --xla_llvm_disable_expensive_passes=true"}
    )
    outputs = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "mesh axes and sizes: {'data': 1, 'fsdp': 1, 'tensor': 1}" in outputs
    for name in ("samples_before.png", "samples_after.png", "curves.png", "summary.md"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    images = tmp_path / "geneval" / "images"
    assert sorted(p.name for p in images.iterdir()) == ["00000", "00001", "manifest.json"]
    assert sorted(p.name for p in (images / "00001" / "samples").iterdir()) == [
        f"{n:05d}.png" for n in range(4)
    ]
    first = json.loads((tmp_path / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()[0])
    assert json.loads((images / "00000" / "metadata.jsonl").read_text()) == first
    images_shown = sum(
        o.output_type == "display_data" and "image/png" in o.data
        for c in notebook.cells
        for o in c.get("outputs", [])
    )
    assert images_shown == 4
