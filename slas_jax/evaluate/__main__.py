"""Command line: ``python -m slas_jax.evaluate --benchmark geneval|unigenbench|shapes --config configs/X.py
--out DIR [--prompts FILE] [--policy FOLDER | --run_dir DIR] [--config.section.key=value ...]``.

Writes a benchmark's images in the layout its official evaluator reads, from the config's model (a base
model: ``model.init_checkpoint`` / ``model.checkpoint``), an exported policy (``--policy``, a weights folder:
its backbone, the config's sampler) or a run's latest train-state checkpoint (``--run_dir``):

- ``geneval``: ``--prompts`` GenEval's evaluation_metadata.jsonl -> ``<out>/<index:05d>/metadata.jsonl``,
  ``samples/<n:05d>.png`` and ``grid.png`` (djghosh13/geneval's layout); score with its
  evaluation/evaluate_images.py.
- ``unigenbench``: ``--prompts`` UniGenBench++'s data/test_prompts_<category>.csv ->
  ``<out>/<category>/<model_name>/<index>_<j>.png`` (CodeGoat24/UniGenBench's eval_data layout); score with
  its eval/eval_gemini.sh or eval/eval_vllm.sh ``--eval_data_dir <out> --model <model_name>``. Exit 2 while
  an image is missing.
- ``shapes``: the config's fixed sets (``eval.sets``) scored by its ground truth (``eval.scorer``), strict
  and partial, overall and per category, into ``<out>/shapes.json`` and ``shapes.md``.

Image j of the prompt at index p is drawn from key fold_in(fold_in(PRNGKey(seed), p), j): the same noise
whatever the batch, devices, hosts or files already present, and the same bytes for the same command. A
rerun skips the valid images (a damaged one is regenerated, with a warning line), so an interrupted export
resumes; ``--check_only`` only verifies.
Each host takes its share of the prompts (``--multihost`` joins a multi-host run), each batch is split over
the host's devices. ``manifest.json`` (in ``<out>``, for unigenbench in the image folder) records counts,
seeds, model and command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from absl import flags

from slas_jax import parallel
from slas_jax.cli import Command, Parsed, define_multihost_flags
from slas_jax.config import Config, ConfigError, describe_config, load_config
from slas_jax.errors import UserError
from slas_jax.evaluate import driver, geneval, shapes_benchmark, unigenbench
from slas_jax.evaluate.driver import ImageJob
from slas_jax.evaluate.model import load_model
from slas_jax.weights import read_metadata

BENCHMARKS = ("geneval", "unigenbench", "shapes")


def define_flags(values: flags.FlagValues) -> None:
    """The evaluate command's own flags."""
    flags.DEFINE_enum(
        "benchmark", None, BENCHMARKS, "The benchmark whose images to write.", flag_values=values
    )
    flags.DEFINE_string("out", None, "Output folder (created; a rerun resumes in it).", flag_values=values)
    flags.DEFINE_string(
        "prompts",
        None,
        "geneval: evaluation_metadata.jsonl; unigenbench: data/test_prompts_<category>.csv.",
        flag_values=values,
    )
    flags.DEFINE_string("policy", None, "An exported policy (weights folder) to sample.", flag_values=values)
    flags.DEFINE_string(
        "run_dir", None, "A run folder whose latest checkpoints/ train state to sample.", flag_values=values
    )
    flags.DEFINE_integer(
        "images_per_prompt", 4, "Images per prompt (both evaluators' default).", flag_values=values
    )
    flags.DEFINE_integer("seed", 0, "Seed of every image's key.", flag_values=values)
    flags.DEFINE_integer(
        "batch_size", 8, "Images per sampler call (rounded up to the devices' multiple).", flag_values=values
    )
    flags.DEFINE_bool(
        "skip_grid", False, "geneval: no grid.png (as the official --skip_grid).", flag_values=values
    )
    flags.DEFINE_string(
        "category",
        None,
        "unigenbench: en, en_long, zh or zh_long (default: from the CSV's name).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "model_name", None, "unigenbench: the folder name the evaluator's --model takes.", flag_values=values
    )
    flags.DEFINE_integer(
        "num_prompts", 0, "shapes: prompts of each fixed set (0: all of them).", flag_values=values
    )
    flags.DEFINE_bool(
        "check_only",
        False,
        "Generate nothing: verify the images; exit 2 when one is missing or damaged.",
        flag_values=values,
    )
    define_multihost_flags(values)


COMMAND = Command(
    "evaluate",
    __doc__,
    config_hint="configs/<name>.py",
    define_flags=define_flags,
    config_help=describe_config,
)


def _flag(parsed: Parsed, name: str) -> Any:
    return parsed.flags[name].value


def _required(parsed: Parsed, name: str) -> str:
    value = _flag(parsed, name)
    if not value:
        benchmark = _flag(parsed, "benchmark")
        raise ConfigError(f"--{name} is required{f' for --benchmark {benchmark}' if benchmark else ''}")
    return value


@dataclass(frozen=True)
class Plan:
    """What a benchmark writes: its image ``jobs``, the ``folder`` its evaluator reads (where the manifest
    goes), the manifest's ``extra`` entries, the other ``files`` its evaluator reads (GenEval's
    metadata.jsonl), and its own inputs (``metadata``: GenEval's objects; ``sets``: the shapes benchmark's
    fixed sets)."""

    jobs: list[ImageJob]
    folder: Path
    extra: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    sets: list[shapes_benchmark.BenchmarkSet] = field(default_factory=list)


def check_complete(layout: Plan, resolution: int, what: str, fix: str) -> None:
    """UserError naming the count and the first missing or damaged image of ``layout`` (or its first
    missing other file), and ``fix``."""
    jobs = layout.jobs
    bad = [job.path for job in jobs if not job.path.is_file() or driver.image_problem(job.path, resolution)]
    if bad:
        raise UserError(
            f"{len(bad)} of {len(jobs)} {what} images are missing or damaged (first: {bad[0]}); {fix}"
        )
    if missing := [path for path in layout.files if not path.is_file()]:
        raise UserError(f"{len(missing)} {what} files are missing (first: {missing[0]}); {fix}")


def plan(benchmark: str, parsed: Parsed, config: Config, out: Path, images_per_prompt: int) -> Plan:
    """The benchmark's layout from its prompt file (geneval, unigenbench) or the config's sets (shapes)."""
    if benchmark == "geneval":
        prompts = _required(parsed, "prompts")
        metadata = geneval.read_metadata(prompts)
        jobs = geneval.jobs(out, metadata, images_per_prompt)
        files = [geneval.prompt_folder(out, i) / geneval.METADATA_FILE for i in range(len(metadata))]
        return Plan(jobs, out, {"prompts_file": str(Path(prompts).absolute())}, files, metadata=metadata)
    if benchmark == "unigenbench":
        prompts = _required(parsed, "prompts")
        category = unigenbench.category_of(prompts, _flag(parsed, "category"))
        folder = unigenbench.image_folder(out, category, _required(parsed, "model_name"))
        jobs = unigenbench.jobs(folder, unigenbench.read_prompts(prompts, category), images_per_prompt)
        return Plan(jobs, folder, {"prompts_file": str(Path(prompts).absolute()), "category": category})
    sets = shapes_benchmark.benchmark_sets(config, out, _flag(parsed, "num_prompts"), images_per_prompt)
    return Plan([job for bench in sets for job in bench.jobs], out, {}, sets=sets)


def resolution(config: Config, policy: str | None) -> int:
    """The image side the files must have: the policy's model's, else the config's."""
    return int(read_metadata(policy)["model"]["resolution"]) if policy else config.model.resolution


def evaluate_command(parsed: Parsed, argv: Sequence[str]) -> str:
    """The command's body: config and flags -> images (and scores) in ``--out`` -> summary line."""
    benchmark = _required(parsed, "benchmark")
    out = Path(_required(parsed, "out"))
    config = load_config(parsed.config)
    images_per_prompt, seed, policy = (_flag(parsed, k) for k in ("images_per_prompt", "seed", "policy"))
    if images_per_prompt < 1 or _flag(parsed, "batch_size") < 1:
        raise ConfigError("--images_per_prompt and --batch_size must be >= 1")
    if _flag(parsed, "multihost"):
        parallel.initialize_distributed(
            _flag(parsed, "coordinator_address"), _flag(parsed, "num_processes"), _flag(parsed, "process_id")
        )
    layout = plan(benchmark, parsed, config, out, images_per_prompt)
    if _flag(parsed, "check_only"):
        fix = "rerun without --check_only to generate them"
        check_complete(layout, resolution(config, policy), benchmark, fix)
        return f"done: {len(layout.jobs)} {benchmark} images in {layout.folder} are complete"
    model = load_model(config, policy=policy, run_dir=_flag(parsed, "run_dir"))
    done = driver.generate(
        model, layout.jobs, seed=seed, batch_size=_flag(parsed, "batch_size"), desc=benchmark
    )
    if benchmark == "geneval":
        share = driver.own_share(layout.jobs, jax.process_index(), jax.process_count())
        owned = sorted({job.prompt_index for job in share})
        geneval.write_metadata(out, layout.metadata, owned)
        if not _flag(parsed, "skip_grid"):
            geneval.write_grids(out, share, geneval.stale_grids(out, done.written, owned))
    driver.wait_for_all_hosts()
    if jax.process_index() != 0:
        return f"done: process {jax.process_index()} holds {done.owned} images, wrote {len(done.written)}"
    check_complete(
        layout, model.config.model.resolution, benchmark, "rerun the same command to generate them"
    )
    extra, summary = dict(layout.extra), ""
    if layout.sets:
        results = {
            b.name: shapes_benchmark.score_set(model.config, b, images_per_prompt) for b in layout.sets
        }
        shapes_benchmark.write_results(out, results)
        extra["results"] = results
        summary = "; " + ", ".join(
            f"{name} strict {100 * r['all']['strict']:.1f}% partial {r['all']['partial']:.3f}"
            for name, r in results.items()
        )
    driver.write_manifest(layout.folder, benchmark, model, layout.jobs, seed=seed, command=argv, extra=extra)
    return (
        f"done: {len(layout.jobs)} {benchmark} images in {layout.folder} ({len(done.written)} written, "
        f"{done.replaced} of them replacing damaged files, {done.kept} kept){summary}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return COMMAND.main(lambda parsed: evaluate_command(parsed, argv), argv)


if __name__ == "__main__":
    raise SystemExit(main())
