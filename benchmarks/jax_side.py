"""The slas-jax side of a benchmark: the library's own pipeline, rollout and GRPO step, as ``train.run`` builds
them (``build_pipeline``, ``grpo.make_train_step`` + ``grpo.jit_train_step`` with the state donated), and the
parts the step is made of, each compiled alone.

Stages (each returns once its outputs are ready):

- ``matmul``: one jitted float32 (n, n) @ (n, n), the machine's practical peak;
- ``rollout``: ``grpo.rollout`` under jit: B trajectories with log-probs and their images;
- ``step``: the whole GRPO step (rollout, reward, advantages, packing, every optimizer update);
- ``slice``: one loss + gradient of ``losses.policy_loss`` on one (micro-batch, timestep) slice, the unit the
  step's update scans over (``grpo.accumulate_gradients``).

FLOPs come from XLA's ``cost_analysis()``, which counts a while loop's body once whatever its trip count (a
10-step scan of a matmul reports one matmul's FLOPs), so a whole rollout or step is undercounted. Each stage's
FLOPs are therefore counted from its loop bodies: the rollout program's count is one guided denoiser call
per scan it runs (at batch P for the steps a group shares, ``rollout.shared_steps``, then at B) plus the text
encoder, which is scaled to the T calls it makes (the encoder, counted T times, is well under 1% here); a
step is the rollout + (trained slices) x one slice compiled alone. Loops inside the model count once too
(CPU attention runs its batch chunks under ``lax.map``), so these are lower bounds. The whole step program's
own count is reported beside them for the record.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp

from slas_jax import grpo, parallel, param_paths
from slas_jax.config import load_config
from slas_jax.losses import Transitions
from slas_jax.pipelines import build_pipeline
from slas_jax.rollout import shared_steps

MATMUL = 4096


def mean_brightness(images: jax.Array) -> jax.Array:
    """The benchmark's reward: images (B, h, w, 3) float32 in [0, 1] -> (B,) float32 mean."""
    return jnp.mean(images, axis=(1, 2, 3))


def _timed_compile(jitted: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0))


class JaxSide:
    """Everything one slas-jax worker builds from a ``workloads.jax_spec`` (``slices``: the step's trained
    (micro-batch, timestep) slices); on an accelerator the model computes in bfloat16 (``model.dtype``), on
    CPU in float32."""

    def __init__(self, spec: dict[str, Any]):
        values = spec["config"]
        if jax.default_backend() != "cpu":
            values = {**values, "model": {**values["model"], "dtype": "bfloat16"}}
        self.config = config = load_config(values)
        bundle = build_pipeline(config, spec["vocabulary"])
        self.pipeline = pipeline = bundle.pipeline
        mesh = parallel.make_mesh()
        tx = grpo.make_optimizer(config)
        state = grpo.init_train_state(bundle.params, bundle.frozen, tx, config)
        shardings = grpo.state_shardings(
            state,
            parallel.state_shardings(bundle.params, mesh),
            jax.tree.map(lambda _: parallel.replicated(mesh), bundle.frozen),
            mesh,
        )
        self.state = jax.device_put(state, shardings)
        self.batch = {"tokens": jnp.asarray(spec["tokens"], jnp.int32)}
        self.key = jax.random.PRNGKey(0)
        self.runs = 0
        self.slices = spec["slices"]
        tc, sc = config.train, config.sampler
        self.batch_size = tc.prompts_per_step * tc.group_size

        step_fn = grpo.make_train_step(
            pipeline, lambda _frozen, images, _batch: mean_brightness(images), tx, config, mesh
        )
        self._step = grpo.jit_train_step(step_fn, self.state, shardings, self.batch, mesh)
        self._rollout = jax.jit(
            functools.partial(
                grpo.rollout,
                pipeline,
                group_size=tc.group_size,
                guidance_scale=sc.guidance_scale,
                same_noise_in_group=sc.same_noise_in_group,
                decode=sc.decode,
            )
        )
        self._slice = jax.jit(jax.value_and_grad(grpo.make_loss_fn(pipeline, config), has_aux=True))
        self._matmul = jax.jit(jnp.matmul)
        self.compiled: dict[str, Any] = {}
        self.stages = {
            "matmul": self.run_matmul,
            "rollout": self.run_rollout,
            "step": self.run_step,
            "slice": self.run_slice,
        }

    # ---- inputs of the parts, shaped as the step feeds them

    def _next_key(self) -> jax.Array:
        self.runs += 1
        return jax.random.fold_in(self.key, self.runs)

    def _slice_inputs(self) -> tuple[Transitions, Any]:
        """One (micro-batch M, timestep) slice of transitions at the first trained step, with the prompt's
        text features, as ``grpo.pack_transitions`` lays one out; uncond broadcast to M."""
        m = self.config.train.micro_batch_size
        cond, uncond = jax.jit(self.pipeline.encode)(self.state.frozen, self.batch)
        latent = (m, *self.pipeline.latent_shape)
        x = jax.random.normal(jax.random.PRNGKey(1), latent)
        steps = Transitions(
            latents=x,
            next_latents=x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), latent),
            log_probs=jnp.zeros((m,), jnp.float32),
            step_index=jnp.full((m,), self.config.loss.exclude_first_steps, jnp.int32),
            advantages=jnp.linspace(-1.0, 1.0, m, dtype=jnp.float32),
            cond=jax.tree.map(lambda a: jnp.broadcast_to(a[:1], (m, *a.shape[1:])), cond),
        )
        uncond_m = jax.tree.map(lambda a: jnp.broadcast_to(a, (m, *a.shape[1:])), uncond)
        return steps, uncond_m

    def compile(self) -> dict[str, float]:
        """Compiles every stage; seconds each."""
        state, key = self.state, self.key
        seconds = {}
        self._slice_args = self._slice_inputs()
        a = jnp.ones((MATMUL, MATMUL), jnp.float32)
        self._matmul_args = (a, a)
        for name, jitted, args in (
            ("matmul", self._matmul, self._matmul_args),
            ("rollout", self._rollout, (state.params, state.frozen, self.batch, key)),
            ("step", self._step, (state, self.batch, key)),
            ("slice", self._slice, (*grpo.split_trained(state.params, state.ref_params), *self._slice_args)),
        ):
            self.compiled[name], seconds[name] = _timed_compile(jitted, *args)
        return seconds

    # ---- stages

    def run_matmul(self) -> None:
        self.compiled["matmul"](*self._matmul_args).block_until_ready()

    def run_rollout(self) -> None:
        out = self.compiled["rollout"](self.state.params, self.state.frozen, self.batch, self._next_key())
        jax.block_until_ready(out)

    def run_step(self) -> None:
        self.state, metrics = self.compiled["step"](self.state, self.batch, self._next_key())
        jax.block_until_ready((self.state.params, metrics))

    def run_slice(self) -> None:
        trained, fixed = grpo.split_trained(self.state.params, self.state.ref_params)
        out = self.compiled["slice"](trained, fixed, *self._slice_args)
        jax.block_until_ready(out)

    def rollout_calls(self) -> tuple[int, int]:
        """(shared steps s, per-sample denoiser calls of the rollout): s steps at batch P (once per group,
        ``rollout.shared_steps``), then T - s at batch B."""
        tc, sampler = self.config.train, self.pipeline.sampler
        s = shared_steps(sampler, tc.group_size, same_noise_in_group=self.config.sampler.same_noise_in_group)
        return s, s * tc.prompts_per_step + (sampler.num_steps - s) * self.batch_size

    def rollout_flops(self) -> float:
        """T guided denoiser calls from the rollout program's count (one call per scan body, module
        docstring), FLOPs linear in the batch."""
        s, calls = self.rollout_calls()
        bodies = self.batch_size + (self.config.train.prompts_per_step if s else 0)
        return _flops(self.compiled["rollout"]) / bodies * calls

    def trained_parameters(self) -> int:
        """Parameters ``optim.trainable`` selects (all when it is empty)."""
        params, patterns = self.state.params, self.config.optim.trainable
        if not patterns:
            return sum(x.size for x in jax.tree.leaves(params))
        mask = param_paths.select(params, patterns, "optim.trainable")
        return sum(
            x.size for x, hit in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if hit
        )

    def info(self) -> dict[str, Any]:
        slice_flops = _flops(self.compiled["slice"])
        rollout = self.rollout_flops()
        memory = self.compiled["step"].memory_analysis()
        return {
            "stages": list(self.stages),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "dtype": self.config.model.dtype,
            "parameters": sum(x.size for x in jax.tree.leaves(self.state.params)),
            "trained_parameters": self.trained_parameters(),
            "trained_slices": self.slices,
            # Denoiser calls the rollout makes, per sample, over T: below 1 where groups share steps.
            "rollout_work_fraction": self.rollout_calls()[1]
            / (self.config.sampler.num_steps * self.batch_size),
            "flops": {
                "matmul": 2.0 * MATMUL**3,
                "rollout": rollout,
                "step": rollout + self.slices * slice_flops,
                "slice": slice_flops,
            },
            "xla_step_program_flops_loop_bodies_once": _flops(self.compiled["step"]),
            "step_temp_mb": None if memory is None else memory.temp_size_in_bytes / 2**20,
        }


def build(spec: dict[str, Any]) -> JaxSide:
    return JaxSide(spec)
