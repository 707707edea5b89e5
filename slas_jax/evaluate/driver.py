"""The resumable image generation every benchmark writer shares: a list of image files to exist, each drawn
from its own key, generated where missing or unreadable, sharded over the hosts and their devices.

Image j of the prompt at index p is sampled with key ``fold_in(fold_in(PRNGKey(seed), p), j)`` by
``generation.make_image_sampler`` (one rollout per image), so its noise does not depend on the batch, the
devices, the hosts or which other images already exist, and with the same batch size and devices (one
compiled shape: the last batch is padded) a deleted image is regenerated bit for bit; other shapes may
round differently in the last float bits. Existing files
are verified (a PNG that does not decode, or is not RGB at the model's resolution, is regenerated with a
warning line); files are written atomically (temporary name, then rename), so an interrupted run leaves no
half-written image. Each process takes every ``process_count``-th prompt (all of that prompt's images).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image
from tqdm import tqdm

from slas_jax import parallel
from slas_jax.config import ConfigError, SamplerConfig, json_ready
from slas_jax.errors import UserError
from slas_jax.evaluate.generation import make_image_sampler
from slas_jax.evaluate.model import EvalModel
from slas_jax.grpo import Pipeline

MANIFEST = "manifest.json"
KEY_RULE = "fold_in(fold_in(PRNGKey(seed), prompt_index), image_index)"


@dataclass(frozen=True)
class ImageJob:
    """One image file to exist: image ``image_index`` of the prompt at ``prompt_index`` (its position in
    the benchmark's prompt file, which seeds it), ``prompt`` the text it is sampled from."""

    prompt_index: int
    image_index: int
    prompt: str
    path: Path


@dataclass
class Generated:
    """What one process did with its share: ``owned`` images, of which ``kept`` were valid on disk,
    ``replaced`` were on disk but invalid, and ``written`` (the new and the replaced) are the paths written."""

    owned: int = 0
    kept: int = 0
    replaced: int = 0
    written: list[Path] = field(default_factory=list)


def image_key(seed: int, prompt_index: int, image_index: int) -> jax.Array:
    """The (2,) uint32 key of image ``image_index`` of the prompt at ``prompt_index``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), prompt_index), image_index)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(…, h, w, 3) float in [0, 1] -> uint8, rounded as diffusers' ``numpy_to_pil`` does."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Writes (h, w, 3) uint8 ``pixels`` as a PNG at ``path`` atomically (same-folder temporary, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(temporary, format="PNG")
    os.replace(temporary, path)


def image_problem(path: Path, resolution: int) -> str | None:
    """Why the file at ``path`` is not a usable (resolution x resolution) RGB PNG; None when it is."""
    try:
        with Image.open(path) as image:
            image.verify()  # the chunks' structure and checksums: a file cut after its pixels fails here
        with Image.open(path) as image:
            image.load()  # decodes every row
            if image.format != "PNG" or image.mode != "RGB" or image.size != (resolution, resolution):
                return (
                    f"{image.format} {image.mode} {image.size[0]}x{image.size[1]}, expected a "
                    f"{resolution}x{resolution} RGB PNG"
                )
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable / damaged files
        return f"does not decode ({e})"
    return None


def own_share(jobs: Sequence[ImageJob], process_index: int, process_count: int) -> list[ImageJob]:
    """The jobs of every ``process_count``-th prompt, starting at the ``process_index``-th (in order of
    first appearance), so each process owns all images of its prompts."""
    order = {p: i for i, p in enumerate(dict.fromkeys(job.prompt_index for job in jobs))}
    return [job for job in jobs if order[job.prompt_index] % process_count == process_index]


_SAMPLER: list[tuple[Pipeline, SamplerConfig, Callable[..., jax.Array]]] = []


def _sampler(pipeline: Pipeline, sampler: SamplerConfig) -> Callable[..., jax.Array]:
    """``make_image_sampler``, the last one reused (with its compilations) while the pipeline object and the
    sampler settings are the same: repeated commands in one process (a notebook, the tests) compile once."""
    if not (_SAMPLER and _SAMPLER[0][0] is pipeline and _SAMPLER[0][1] == sampler):
        _SAMPLER[:] = [(pipeline, sampler, make_image_sampler(pipeline, sampler))]
    return _SAMPLER[0][2]


def generate(
    model: EvalModel, jobs: Sequence[ImageJob], *, seed: int, batch_size: int, desc: str
) -> Generated:
    """Makes every job of this process's share (:func:`own_share` of ``jax.process_index()``) a valid image
    file: valid files are kept, the others sampled ``batch_size`` at a time (rounded up to a multiple of the
    local batch devices) over a mesh of this host's devices (``mesh.fsdp`` / ``mesh.tensor`` of the config;
    data takes the rest) and written. Prints one warning line per replaced file."""
    config, bundle = model.config, model.bundle
    share = own_share(jobs, jax.process_index(), jax.process_count())
    done = Generated(owned=len(share))
    todo = []
    for job in share:
        if not job.path.exists():
            todo.append(job)
            continue
        problem = image_problem(job.path, config.model.resolution)
        if problem is None:
            done.kept += 1
            continue
        tqdm.write(f"warning: {job.path}: {problem}; regenerating it", file=sys.stderr)
        done.replaced += 1
        todo.append(job)
    if not todo:
        return done
    try:  # every prompt before the first image: a prompt the tokenizer refuses ends the run at once
        tokens = dict(
            zip((job.prompt for job in todo), bundle.tokenize([job.prompt for job in todo]), strict=True)
        )
    except ValueError as e:
        raise UserError(f"{e} (a word-level testbed tokenizer takes short prompts only)") from e
    mc = config.mesh
    try:
        mesh = parallel.make_mesh(data=-1, fsdp=mc.fsdp, tensor=mc.tensor, devices=jax.local_devices())
    except ValueError as e:
        raise ConfigError(f"config.mesh: over this host's devices, {e}") from e
    param_shardings = parallel.state_shardings(bundle.params, mesh, mc.rules)
    frozen_shardings = jax.tree.map(lambda _: parallel.replicated(mesh), bundle.frozen)
    params = jax.device_put(bundle.params, param_shardings)
    frozen = jax.device_put(bundle.frozen, frozen_shardings)
    sample = _sampler(bundle.pipeline, config.sampler)
    rows = NamedSharding(mesh, P(parallel.BATCH_AXES))
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    size = -(-batch_size // devices) * devices
    with tqdm(total=len(todo), desc=desc, unit="image", disable=jax.process_index() != 0) as bar:
        for start in range(0, len(todo), size):
            part = todo[start : start + size]
            padded = part + [part[0]] * (size - len(part))  # one compiled shape for every batch
            batch_tokens = np.stack([tokens[job.prompt] for job in padded])
            keys = np.stack([np.asarray(image_key(seed, j.prompt_index, j.image_index)) for j in padded])
            images = to_uint8(
                jax.device_get(sample(params, frozen, *jax.device_put((batch_tokens, keys), rows)))
            )
            for job, pixels in zip(part, images, strict=False):
                write_png(job.path, pixels)
                done.written.append(job.path)
            bar.update(len(part))
    return done


def wait_for_all_hosts() -> None:
    """Returns once every process reached it (no-op on one process): process 0 then sees all files."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("slas_jax.evaluate: images written")


def missing_images(jobs: Sequence[ImageJob]) -> list[Path]:
    """The jobs' paths that are not files, in job order."""
    return [job.path for job in jobs if not job.path.is_file()]


def software_version() -> dict[str, str | None]:
    """slas-jax's installed version and, for a git checkout, its commit."""
    try:
        version = importlib.metadata.version("slas-jax")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"slas_jax": version, "commit": commit, "jax": jax.__version__}


def write_manifest(
    out: Path,
    benchmark: str,
    model: EvalModel,
    jobs: Sequence[ImageJob],
    *,
    seed: int,
    command: Sequence[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``out/manifest.json`` (process 0 only): the benchmark, image counts (on disk now, over every host),
    seeds and the key rule, the model (its source and ``model`` / ``sampler`` sections), the ``command``
    line (program name first) and the software; ``extra`` adds the benchmark's own entries. Returns it."""
    prompts = len({job.prompt_index for job in jobs})
    manifest = {
        "benchmark": benchmark,
        "prompts": prompts,
        "images": len(jobs),
        "images_present": len(jobs) - len(missing_images(jobs)),
        "images_per_prompt": len(jobs) // max(prompts, 1),
        "seed": seed,
        "image_key": KEY_RULE,
        "model": {
            "source": model.source,
            "model": json_ready(model.config.model),
            "sampler": json_ready(model.config.sampler),
        },
        "command": shlex.join(["python", "-m", "slas_jax.evaluate", *command[1:]]),
        "processes": jax.process_count(),
        "devices_per_process": jax.local_device_count(),
        "software": software_version(),
        **extra,
    }
    if jax.process_index() == 0:
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
