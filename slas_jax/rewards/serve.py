"""Command line: ``python -m slas_jax.rewards.serve --reward NAME [--config FILE]
[--config.reward.options.KEY=VALUE ...] [--port P]``.

Serves any registered reward over HTTP for the "remote" reward (protocol: ``slas_jax.rewards.protocol``):
GET /info names the reward and the arrays it reads, POST /score scores a request's images. It is the template
for rewards that cannot run in JAX: replace the scoring function with GenEval's detector or a VLM judge and
keep the protocol. The reward comes from ``--config``'s reward section (default: the library's defaults),
``--reward`` overriding its name. Several requests are scored at once (``--concurrency``, in threads: JAX
and most scoring libraries release the GIL); the server listens on 127.0.0.1 unless ``--host`` says
otherwise, and ``--max_requests`` / ``--max_seconds`` bound how long it runs.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import jax
import numpy as np
import uvicorn
from absl import flags
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from slas_jax.cli import Command, Parsed
from slas_jax.config import ConfigError, RewardConfig, describe_fields, from_mapping
from slas_jax.rewards.protocol import IMAGES_FIELD, INFO_PATH, META_FIELD, SCORE_PATH, decode_image
from slas_jax.rewards.registry import Reward, build_reward

MAX_IMAGES = 4096
"""Images one request may carry."""


class BadRequest(ValueError):
    """What is wrong with a request (a 400 reply)."""


def _request_batch(
    meta_text: str, image_bytes: Sequence[bytes], reads: Sequence[str]
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """A /score request -> images (n, h, w, 3) float32, prompts (n,), arrays (leading axis n); BadRequest."""
    try:
        meta = json.loads(meta_text)
    except ValueError as e:
        raise BadRequest(f"field {META_FIELD!r} is not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prompts"), list):
        raise BadRequest(f'field {META_FIELD!r} must be {{"prompts": [...], "arrays": {{...}}}}')
    prompts, arrays = meta["prompts"], meta.get("arrays", {})
    n = len(image_bytes)
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(f"{n} images but {len(prompts)} prompts")
    missing = [name for name in reads if name not in arrays]
    if missing:
        raise BadRequest(f"the reward reads {', '.join(missing)}, which the request lacks")
    batch = {name: np.asarray(arrays[name]) for name in reads}
    short = [name for name, value in batch.items() if value.shape[:1] != (n,)]
    if short:
        raise BadRequest(f"arrays {', '.join(short)} must have {n} rows, one per image")
    try:
        images = [decode_image(data) for data in image_bytes]
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if n == 0 or len({image.shape for image in images}) != 1:
        raise BadRequest("a request needs one or more images, all of one size")
    return np.stack(images), prompts, batch


def make_scorer(reward: Reward) -> Any:
    """``(images (n, h, w, 3) float32, prompts (n,), arrays) -> scores (n,) float32``: a JAX reward's ``fn``
    jitted (with its ``prepare`` arrays), or a host reward's ``host`` (its failures raised)."""
    if reward.fn is None:

        def host(images: np.ndarray, prompts: Sequence[str], arrays: Mapping[str, np.ndarray]) -> np.ndarray:
            scores, failures = reward.host(images, prompts, arrays)
            if failures:
                raise RuntimeError("; ".join(failures))
            return scores

        return host
    fn = jax.jit(reward.fn)

    def jax_scores(
        images: np.ndarray, prompts: Sequence[str], arrays: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        prepared = reward.prepare(prompts) if reward.prepare is not None else {}
        return np.asarray(fn(reward.params, images, {**prepared, **arrays}), np.float32)

    return jax_scores


def make_app(reward: Reward, name: str, concurrency: int) -> Starlette:
    """The ASGI app serving ``reward`` (registered as ``name``), scoring at most ``concurrency`` requests at
    once in worker threads. ``app.state.requests`` counts the /score requests answered."""
    scorer = make_scorer(reward)
    limiter = anyio.CapacityLimiter(concurrency)

    async def info(_request: Request) -> JSONResponse:
        return JSONResponse({"reward": name, "reads": list(reward.reads)})

    def compute(meta_text: str, image_bytes: list[bytes]) -> list[float | None]:
        images, prompts, arrays = _request_batch(meta_text, image_bytes, reward.reads)
        scores = np.asarray(scorer(images, prompts, arrays), np.float32)
        if scores.shape != (len(images),):
            raise RuntimeError(f"reward {name!r} returned shape {scores.shape} for {len(images)} images")
        # JSON has no NaN: a sample the reward could not score is null.
        return [float(s) if np.isfinite(s) else None for s in scores]

    async def score(request: Request) -> JSONResponse:
        app.state.requests += 1
        try:
            async with request.form(max_files=MAX_IMAGES, max_fields=1) as form:
                meta_text = form.get(META_FIELD)
                if not isinstance(meta_text, str):
                    raise BadRequest(f"missing field {META_FIELD!r}")
                image_bytes = [await part.read() for part in form.getlist(IMAGES_FIELD)]
            scores = await anyio.to_thread.run_sync(compute, meta_text, image_bytes, limiter=limiter)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # the reward's own failure: the client retries it, then reports this line
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse({"scores": scores})

    app = Starlette(routes=[Route(INFO_PATH, info), Route(SCORE_PATH, score, methods=["POST"])])
    app.state.requests = 0
    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (port 0: any free port); ConfigError with one line if it cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    return sock


def make_server(app: Starlette, max_requests: int = 0) -> uvicorn.Server:
    """A uvicorn server for ``app`` that exits after ``max_requests`` requests (0: never); run it with
    ``server.run(sockets=[listen(host, port)])`` and stop it with ``server.should_exit = True``."""
    config = uvicorn.Config(
        app, limit_max_requests=max_requests or None, log_level="warning", access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def serve(server: uvicorn.Server, sock: socket.socket, max_seconds: float = 0.0) -> None:
    """Runs ``server`` on ``sock`` until it exits (after its request limit, ``max_seconds`` if > 0, or a
    signal)."""
    timer = None
    if max_seconds > 0:
        timer = threading.Timer(max_seconds, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    try:
        server.run(sockets=[sock])
    finally:
        if timer is not None:
            timer.cancel()


def define_flags(values: flags.FlagValues) -> None:
    """The serve command's own flags."""
    flags.DEFINE_string(
        "reward", None, "Registered reward to serve (default: the config's reward.name).", flag_values=values
    )
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.", flag_values=values)
    flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).", flag_values=values)
    flags.DEFINE_integer("concurrency", 4, "Requests scored at once (more wait in line).", flag_values=values)
    flags.DEFINE_integer("max_requests", 0, "Exit after this many requests (0: never).", flag_values=values)
    flags.DEFINE_float("max_seconds", 0.0, "Exit after this many seconds (0: never).", flag_values=values)


COMMAND = Command(
    "rewards.serve",
    __doc__,
    config_hint="configs/<name>.py",
    define_flags=define_flags,
    config_help=lambda: "\n".join(describe_fields(RewardConfig, "config.reward")),
    config_default=str(Path(__file__).with_name("serve_config.py")),
)


def serve_command(parsed: Parsed) -> str:
    """The serve command's body: the reward from the config (and --reward) -> app -> served until done."""
    flag = {name: parsed.flags[name].value for name in ("reward", "host", "port", "concurrency")}
    if flag["concurrency"] < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {flag['concurrency']}")
    if "reward" not in parsed.config:
        raise ConfigError("config.reward: the config file has no reward section to serve")
    reward_config = from_mapping(RewardConfig, parsed.config.reward, "reward")
    name = flag["reward"] or reward_config.name
    reward = build_reward(name, reward_config.options)
    sock = listen(flag["host"], flag["port"])
    host, port = sock.getsockname()[:2]
    app = make_app(reward, name, flag["concurrency"])
    print(f"serving reward {name!r} on http://{host}:{port}", flush=True)
    serve(make_server(app, parsed.flags["max_requests"].value), sock, parsed.flags["max_seconds"].value)
    return f"served reward {name!r} on http://{host}:{port}: {app.state.requests} requests"


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(serve_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
