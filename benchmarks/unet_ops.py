"""Where the SD-style UNet's time goes: its heaviest operations alone, forward + backward, slas-jax's layers
(XLA) against PyTorch's, at the shapes the ``unet`` benchmark runs them (batch 8, 32x32 pixels, channels
64/128/256, 8 heads, text length 16, cross-attention 128).

    python benchmarks/unet_ops.py --out benchmarks/results/unet_ops.json

Each op is timed as the gradient of sum(op(x)) (attention) or sum(op(x)^2) w.r.t. its inputs and weights,
jitted on the JAX side; each framework in its own worker process (``harness``: in one process their thread
pools slow each other down), interleaved, best of ``--repeats``; torch uses as many threads as XLA.

- ``attention self 32x32``: (8, 1024 tokens, 8 heads, head dim 8), slas-jax ``layers.attention`` (on CPU
  the batch in chunks whose logits fit 2 MB, each rematerialised) against
  ``torch.nn.functional.scaled_dot_product_attention``;
- ``attention cross 32x32``: the same queries over 16 text tokens;
- ``attention self 16x16``: (8, 256, 8, 16);
- ``conv3x3 c@s``: a 3x3 convolution c -> c channels at s x s, slas-jax ``layers.conv`` (with the CPU
  convolution hook) against ``torch.nn.Conv2d``;
- ``groupnorm c@s``: 32 groups.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from harness import Worker, interleave, machine, table, threads

from slas_jax.models import layers

BATCH = 8


def _attention(side: str, q_shape: tuple[int, ...], kv_shape: tuple[int, ...]) -> Callable[[], None]:
    q, k, v = (
        np.random.default_rng(i).standard_normal(s, np.float32)
        for i, s in enumerate((q_shape, kv_shape, kv_shape))
    )
    if side == "jax":
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(layers.attention(q, k, v)), argnums=(0, 1, 2)))
        q, k, v = map(jnp.asarray, (q, k, v))
        return lambda: jax.block_until_ready(grad(q, k, v))
    # torch's layout: (batch, heads, tokens, head dim)
    tq, tk, tv = (torch.tensor(a).transpose(1, 2).requires_grad_() for a in (q, k, v))
    return lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).sum().backward()


def _nhwc(channels: int, side_length: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((BATCH, side_length, side_length, channels), np.float32)


def _module(
    side: str, jax_module: nnx.Module, torch_module: torch.nn.Module, x: np.ndarray
) -> Callable[[], None]:
    """Loss and gradient of sum(module(x)^2) w.r.t. the parameters and x."""
    if side == "jax":
        graph, params = nnx.split(jax_module)
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graph, p)(x) ** 2), argnums=(0, 1)))
        xj = jnp.asarray(x)
        return lambda: jax.block_until_ready(grad(params, xj))
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    return lambda: (torch_module(xt) ** 2).sum().backward()


def ops(side: str) -> dict[str, Callable[[], None]]:
    """name -> one forward + backward on ``side`` ("jax" or "torch")."""
    rngs = nnx.Rngs(0)
    return {
        "attention self 32x32": _attention(side, (BATCH, 1024, 8, 8), (BATCH, 1024, 8, 8)),
        "attention cross 32x32": _attention(side, (BATCH, 1024, 8, 8), (BATCH, 16, 8, 8)),
        "attention self 16x16": _attention(side, (BATCH, 256, 8, 16), (BATCH, 256, 8, 16)),
        **{
            f"conv3x3 {c}@{n}": _module(
                side, layers.conv(c, c, 3, rngs=rngs), torch.nn.Conv2d(c, c, 3, padding=1), _nhwc(c, n)
            )
            for c, n in ((64, 32), (128, 16), (256, 8))
        },
        "groupnorm 64@32": _module(
            side, layers.group_norm(64, 32, rngs=rngs), torch.nn.GroupNorm(32, 64), _nhwc(64, 32)
        ),
    }


class OpsSide:
    """The harness side of one framework: each op a stage, compiled (JAX) or warmed up by one run."""

    def __init__(self, spec: dict[str, str]):
        torch.set_num_threads(threads())
        self.stages = ops(spec["side"])

    def compile(self) -> dict[str, float]:
        seconds = {}
        for name, run in self.stages.items():
            start = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - start
        return seconds

    def info(self) -> dict[str, list[str]]:
        return {"stages": list(self.stages)}


def build(spec: dict[str, str]) -> OpsSide:
    return OpsSide(spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    workers = [
        Worker("slas-jax", "unet_ops", {"side": "jax"}),
        Worker("pytorch", "unet_ops", {"side": "torch"}),
    ]
    try:
        for w in workers:
            w.call("compile")
        names = workers[0].stages()
        timings = interleave(workers, names, repeats=args.repeats, warmup=0, log=lambda _: None)
    finally:
        for w in workers:
            w.close()
    best = {name: {w.label: timings.best(w.label, name) for w in workers} for name in names}
    rows = [
        [name, b["slas-jax"] * 1e3, b["pytorch"] * 1e3, b["pytorch"] / b["slas-jax"]]
        for name, b in best.items()
    ]
    report = table(
        ["forward + backward", "slas-jax (ms)", "pytorch (ms)", "ratio (PyTorch / slas-jax)"], rows
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "unet_ops",
            "machine": machine(),
            "repeats": args.repeats,
            "runs_s": timings.runs,
        }
        args.out.write_text(json.dumps({**record, "best_s": best, "table": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
