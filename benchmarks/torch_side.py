"""The PyTorch side of a benchmark: the same models as diffusers / transformers classes, sampled and trained by a
loop with DanceGRPO's structure (fastvideo/train_grpo_sd.py, train_grpo_flux.py): rollout under
``torch.no_grad`` storing every latent and log-prob, group-normalised advantages, then per (micro-batch,
timestep) one forward, the log-prob of the stored transition, the clipped ratio loss (plus the KL to a frozen
reference copy when the config has one) and ``backward`` accumulating gradients, then gradient clipping and
one AdamW step per optimizer update.

Built from ``workloads.torch_spec`` only: this module imports neither slas-jax nor JAX, so the worker's memory
and threads are PyTorch's alone. The scheduler maths are written here from the formulas DanceGRPO and
diffusers use (DDIM with eta as ``ddim_step_with_logprob``, DanceGRPO's ``flux_step``, Flow-GRPO's SDE),
with slas-jax's conventions: float32 log-density averaged over the non-batch dimensions, 0 where a step is
deterministic (std 0, or outside ``sampler.sde_window``). On CUDA the models run under bfloat16 autocast.

Stages: ``matmul`` (one float32 (n, n) @ (n, n)), ``rollout``, ``step`` and ``slice`` (one (micro-batch,
timestep) forward + backward), as the slas-jax side.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import diffusers
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

MATMUL = 4096
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) float32 log-density of ``sample`` under N(mean, std^2) averaged over non-batch dims; std (B,),
    0 where std == 0."""
    s = _expand(std, mean)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    density = (
        -((sample.detach().float() - mean.float()) ** 2) / (2 * safe**2) - torch.log(safe) - _LOG_SQRT_2PI
    )
    density = torch.where(s > 0, density, torch.zeros_like(density))
    return density.mean(dim=tuple(range(1, density.ndim)))


class DDIM:
    """DDIM with eta over diffusers' DDIMScheduler schedule (SD's scaled-linear betas, "leading" spacing,
    steps_offset 1, set_alpha_to_one) for an epsilon-predicting UNet."""

    def __init__(self, sampler: dict[str, Any], device: torch.device):
        scheduler = diffusers.DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=1,
        )
        scheduler.set_timesteps(sampler["num_steps"])
        self.num_steps = sampler["num_steps"]
        self.timesteps = scheduler.timesteps.to(device)
        self.alphas = scheduler.alphas_cumprod.float().to(device)
        self.final_alpha = float(scheduler.final_alpha_cumprod)
        self.ratio = scheduler.config.num_train_timesteps // self.num_steps
        self.eta = sampler["noise_level"]
        self.window = sampler["sde_window"]

    def model_time(self, i: torch.Tensor) -> torch.Tensor:
        return self.timesteps[i]

    def _eta(self, i: torch.Tensor) -> torch.Tensor:
        inside = torch.ones_like(i, dtype=torch.bool)
        if self.window is not None:
            inside = (i >= self.window[0]) & (i < self.window[1])
        return torch.where(inside, self.eta, 0.0)

    def _alphas(self, i: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.timesteps[i]
        prev = t - self.ratio
        a_t = self.alphas[t]
        a_p = torch.where(prev >= 0, self.alphas[prev.clamp(min=0)], torch.full_like(a_t, self.final_alpha))
        return a_t, a_p

    def predict_x0(self, eps: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a_t, _ = self._alphas(i, x)
        return (x - _expand((1 - a_t).sqrt(), x) * eps) / _expand(a_t.sqrt(), x)

    def step(
        self, eps: torch.Tensor, i: torch.Tensor, x: torch.Tensor, prev_sample: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """i: (B,) step indices. Returns (x_next, log_prob (B,), mean, std (B,)), float32."""
        eps, x = eps.float(), x.float()
        a_t, a_p = self._alphas(i, x)
        variance = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        std = self._eta(i) * variance.clamp(min=0).sqrt()
        x0 = self.predict_x0(eps, i, x)
        direction = _expand((1 - a_p - std**2).clamp(min=0).sqrt(), x) * eps
        mean = _expand(a_p.sqrt(), x) * x0 + direction
        if prev_sample is None:
            prev_sample = mean + _expand(std, x) * torch.randn_like(mean)
        return prev_sample, gaussian_log_prob(prev_sample, mean, std), mean, std


class FlowSDE:
    """The flow-matching SDE steps over shifted sigmas (SD3 / DanceGRPO ``sd3_time_shift``): DanceGRPO's
    ``flux_step`` (sampler "dance_flow", eta) or Flow-GRPO's (sampler "flow_sde", noise level a)."""

    def __init__(self, sampler: dict[str, Any], device: torch.device):
        s = torch.linspace(1.0, 0.0, sampler["num_steps"] + 1, dtype=torch.float64)
        shift = sampler["shift"]
        self.sigmas = (shift * s / (1 + (shift - 1) * s)).float().to(device)
        self.num_steps = sampler["num_steps"]
        self.level = sampler["noise_level"]
        self.dance = sampler["name"] == "dance_flow"
        self.window = sampler["sde_window"]

    def model_time(self, i: torch.Tensor) -> torch.Tensor:
        return self.sigmas[i]

    def predict_x0(self, v: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x - _expand(self.sigmas[i], x) * v

    def step(
        self, v: torch.Tensor, i: torch.Tensor, x: torch.Tensor, prev_sample: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """i: (B,) step indices. Returns (x_next, log_prob (B,), mean, std (B,)), float32."""
        v, x = v.float(), x.float()
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        dt = sigma_next - sigma
        level = torch.full_like(sigma, self.level)
        if self.window is not None:
            level = torch.where((i >= self.window[0]) & (i < self.window[1]), level, 0.0)
        s, d = _expand(sigma, x), _expand(dt, x)
        if self.dance:
            x0 = x - s * v
            score = -(x - x0 * (1 - s)) / s**2
            mean = x + d * (v - 0.5 * _expand(level, x) ** 2 * score)
            std = level * (-dt).sqrt()
        else:
            std_t = level * (sigma / (1 - torch.where(sigma >= 1, sigma_next, sigma))).sqrt()
            e = _expand(std_t, x)
            mean = x * (1 + e**2 / (2 * s) * d) + v * (1 + e**2 * (1 - s) / (2 * s)) * d
            std = std_t * (-dt).sqrt()
        if prev_sample is None:
            prev_sample = mean + _expand(std, x) * torch.randn_like(mean)
        return prev_sample, gaussian_log_prob(prev_sample, mean, std), mean, std


def _image_ids(side: int, device: torch.device) -> torch.Tensor:
    """FluxPipeline's latent image ids for a side x side patch grid: (side^2, 3), (0, row, col)."""
    ids = torch.zeros(side, side, 3)
    ids[..., 1] += torch.arange(side)[:, None]
    ids[..., 2] += torch.arange(side)[None, :]
    return ids.reshape(side * side, 3).to(device)


class TorchSide:
    """One PyTorch worker: models, optimizer and the DanceGRPO-structured loop of a ``workloads.torch_spec``
    plus ``threads`` (torch.set_num_threads)."""

    def __init__(self, spec: dict[str, Any]):
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self.device.type == "cuda"
        self.autocast: Callable[[], AbstractContextManager] = (
            (lambda: torch.autocast("cuda", torch.bfloat16)) if cuda else nullcontext
        )
        self.dtype = "bfloat16 autocast" if cuda else "float32"
        self.spec = spec
        self.family = spec["family"]
        self.text = (
            transformers.CLIPTextModel(transformers.CLIPTextConfig(**spec["text"])).to(self.device).eval()
        )
        backbone = spec["backbone"]
        if self.family == "unet":
            self.model = diffusers.UNet2DConditionModel(**backbone)
            self.sampler: DDIM | FlowSDE = DDIM(spec["sampler"], self.device)
            resolution = spec["model"]["resolution"]
            self.latent_shape = (backbone["in_channels"], resolution, resolution)
        else:
            self.model = diffusers.FluxTransformer2DModel(**backbone)
            self.sampler = FlowSDE(spec["sampler"], self.device)
            side = spec["model"]["resolution"] // 2
            self.latent_shape = (side * side, backbone["in_channels"])
            self.img_ids = _image_ids(side, self.device)
            self.txt_ids = torch.zeros(len(spec["tokens"][0]), 3, device=self.device)
        self.model.to(self.device)
        loss = spec["loss"]
        self.ref = None
        if loss["kl_beta"] > 0:
            self.ref = copy.deepcopy(self.model).requires_grad_(False).eval()
        patterns = [re.compile(p) for p in spec["optim"]["trainable"]]
        self.trained = []
        for name, p in self.model.named_parameters():
            train = not patterns or any(c.search(name) for c in patterns)
            p.requires_grad_(train)
            if train:
                self.trained.append(p)
        o = spec["optim"]
        self.optimizer = torch.optim.AdamW(
            self.trained,
            lr=o["learning_rate"],
            betas=(o["b1"], o["b2"]),
            eps=o["eps"],
            weight_decay=o["weight_decay"],
        )
        self.tokens = torch.tensor(spec["tokens"], device=self.device)
        self.uncond_tokens = torch.tensor(spec["uncond_tokens"], device=self.device)
        a = torch.ones(MATMUL, MATMUL, device=self.device)
        self._matmul_args = (a, a)
        self._slice_data = self.synthetic_slice_data()
        self.stages = {
            "matmul": self.run_matmul,
            "rollout": self.run_rollout,
            "step": self.run_step,
            "slice": self.run_slice,
        }
        self._flops: dict[str, float] | None = None

    # ---- model calls

    def _encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text(tokens)
        return out.last_hidden_state, out.pooler_output

    def _denoise(self, model: torch.nn.Module, x: torch.Tensor, i: torch.Tensor, cond: Any) -> torch.Tensor:
        """One (CFG-batched when guidance_scale != 1) backbone call: the prediction (B, *latent), float32."""
        scale = self.spec["sampler"]["guidance_scale"]
        features, pooled = cond
        t = self.sampler.model_time(i)
        if scale != 1.0:
            uncond_f, uncond_p = self.uncond
            n = x.shape[0]
            features = torch.cat([uncond_f.expand(n, -1, -1), features])
            pooled = torch.cat([uncond_p.expand(n, -1), pooled])
            x, t = torch.cat([x, x]), torch.cat([t, t])
        with self.autocast():
            if self.family == "unet":
                pred = model(x, t, encoder_hidden_states=features).sample
            else:
                pred = model(
                    hidden_states=x,
                    encoder_hidden_states=features,
                    pooled_projections=pooled,
                    timestep=t,
                    img_ids=self.img_ids,
                    txt_ids=self.txt_ids,
                    return_dict=False,
                )[0]
        pred = pred.float()
        if scale != 1.0:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + scale * (pred_cond - pred_uncond)
        return pred

    # ---- the loop

    @torch.no_grad()
    def rollout(self) -> dict[str, torch.Tensor]:
        """B = P x G trajectories: latents / next_latents (B, T, *latent), log_probs (B, T), cond (B, ...),
        rewards (B,) (mean brightness of the images)."""
        group = self.spec["train"]["group_size"]
        sampler_config = self.spec["sampler"]
        prompts = self.tokens.shape[0]
        n = prompts * group
        features, pooled = self._encode(self.tokens)
        cond = (features.repeat_interleave(group, 0), pooled.repeat_interleave(group, 0))
        self.uncond = self._encode(self.uncond_tokens)
        if sampler_config["same_noise_in_group"]:
            x = torch.randn(prompts, 1, *self.latent_shape, device=self.device).expand(
                -1, group, *self.latent_shape
            )
            x = x.reshape(n, *self.latent_shape).contiguous()
        else:
            x = torch.randn(n, *self.latent_shape, device=self.device)
        latents, next_latents, log_probs = [], [], []
        self.model.eval()
        for step in range(self.sampler.num_steps):
            i = torch.full((n,), step, device=self.device, dtype=torch.long)
            pred = self._denoise(self.model, x, i, cond)
            x_next, log_prob, _, _ = self.sampler.step(pred, i, x)
            latents.append(x)
            next_latents.append(x_next)
            log_probs.append(log_prob)
            x = x_next
        image = (
            self.sampler.predict_x0(pred, i, latents[-1]) if sampler_config["decode"] == "prediction" else x
        )
        # Mean brightness of the [0, 1] image; FLUX's packing only permutes pixels, so no unpacking is needed.
        rewards = ((image + 1) / 2).clamp(0, 1).mean(dim=tuple(range(1, image.ndim)))
        return {
            "latents": torch.stack(latents, 1),
            "next_latents": torch.stack(next_latents, 1),
            "log_probs": torch.stack(log_probs, 1),
            "cond": cond,
            "rewards": rewards,
        }

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """DanceGRPO's group-relative advantages (r - mean) / (std + eps), clipped to +-adv_clip: (B,)."""
        group = self.spec["train"]["group_size"]
        grouped = rewards.reshape(-1, group)
        adv = (grouped - grouped.mean(1, keepdim=True)) / (
            grouped.std(1, keepdim=True) + self.spec["advantage"]["eps"]
        )
        clip = self.spec["advantage"]["adv_clip"]
        return adv.reshape(-1).clamp(-clip, clip) if clip is not None else adv.reshape(-1)

    def trained_steps(self, n: int) -> torch.Tensor:
        """(B, K) step indices: a random permutation of each sample's trainable steps, first K (DanceGRPO)."""
        loss, k = self.spec["loss"], self.spec["trained_timesteps"]
        first = loss["exclude_first_steps"]
        trainable = self.sampler.num_steps - first - loss["exclude_last_steps"]
        return torch.stack([torch.randperm(trainable)[:k] for _ in range(n)]).to(self.device) + first

    def slice_loss(
        self, data: dict[str, torch.Tensor], rows: slice, i: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor:
        """The loss of one (micro-batch, timestep) slice: re-scored log-prob, clipped ratio, KL (M,) -> ()."""
        loss_config = self.spec["loss"]
        picked = torch.arange(rows.start, rows.stop, device=self.device)
        x, x_next = data["latents"][picked, i], data["next_latents"][picked, i]
        cond = tuple(c[rows] for c in data["cond"])
        pred = self._denoise(self.model, x, i, cond)
        _, log_prob, mean, std = self.sampler.step(pred, i, x, prev_sample=x_next)
        ratio = torch.exp(log_prob - data["log_probs"][picked, i])
        clip = loss_config["clip_range"]
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
        if self.ref is not None:
            with torch.no_grad():
                _, _, ref_mean, _ = self.sampler.step(
                    self._denoise(self.ref, x, i, cond), i, x, prev_sample=x_next
                )
            sq = ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))
            safe = torch.where(std > 0, std, torch.ones_like(std))
            loss = loss + loss_config["kl_beta"] * (sq / (2 * safe**2)).mean()
        return loss

    def step(self) -> None:
        """Rollout, rewards, advantages, then U optimizer updates, each accumulating A micro-batches x K
        timesteps of forward/backward before clipping and one AdamW step."""
        data = self.rollout()
        adv = self.advantages(data["rewards"])
        n = adv.shape[0]
        micro, accum = self.spec["train"]["micro_batch_size"], self.spec["train"]["grad_accum_steps"]
        steps = self.trained_steps(n)
        k = steps.shape[1]
        self.model.train()
        for update in range(n // (micro * accum)):
            self.optimizer.zero_grad(set_to_none=True)
            for a in range(accum):
                start = (update * accum + a) * micro
                rows = slice(start, start + micro)
                for j in range(k):
                    loss = self.slice_loss(data, rows, steps[rows, j], adv[rows])
                    (loss / (accum * k)).backward()
            torch.nn.utils.clip_grad_norm_(self.trained, self.spec["optim"]["grad_clip"])
            self.optimizer.step()

    # ---- stages

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run_matmul(self) -> None:
        torch.matmul(*self._matmul_args)
        self._sync()

    def run_rollout(self) -> None:
        self.rollout()
        self._sync()

    def run_step(self) -> None:
        self.step()
        self._sync()

    def run_slice(self) -> None:
        self.one_slice()
        self._sync()

    def compile(self) -> dict[str, float]:
        return {}

    def synthetic_slice_data(self) -> dict[str, torch.Tensor]:
        """Random stored transitions (B, T, *latent) with the prompt's text features, shaped as a rollout's
        (what a slice costs does not depend on the values)."""
        n = self.tokens.shape[0] * self.spec["train"]["group_size"]
        group, steps = self.spec["train"]["group_size"], self.sampler.num_steps
        with torch.no_grad():
            features, pooled = self._encode(self.tokens)
            self.uncond = self._encode(self.uncond_tokens)
        latents = torch.randn(n, steps, *self.latent_shape, device=self.device)
        return {
            "latents": latents,
            "next_latents": latents + 0.1 * torch.randn_like(latents),
            "log_probs": torch.zeros(n, steps, device=self.device),
            "cond": (features.repeat_interleave(group, 0), pooled.repeat_interleave(group, 0)),
        }

    def one_slice(self) -> None:
        """One (micro-batch, timestep) slice's forward + backward at the first trained step, gradients then
        dropped: the unit the step repeats (trained slices) times, as slas-jax's ``slice`` stage."""
        micro = self.spec["train"]["micro_batch_size"]
        first = torch.full((micro,), self.spec["loss"]["exclude_first_steps"], device=self.device)
        self.model.train()
        self.slice_loss(
            self._slice_data, slice(0, micro), first, torch.ones(micro, device=self.device)
        ).backward()
        self.optimizer.zero_grad(set_to_none=True)

    def count_flops(self) -> dict[str, float]:
        """FLOPs of the matmul-class ops (mm, bmm, conv, attention) that FlopCounterMode has formulas for:
        one backbone call at batch B and one slice's forward + backward; a rollout is T calls, a step adds
        (trained slices) slices. Elementwise ops are not counted (XLA's counts include them)."""
        data = self._slice_data
        n = data["latents"].shape[0]
        i = torch.zeros(n, dtype=torch.long, device=self.device)
        with FlopCounterMode(display=False) as forward, torch.no_grad():
            self._denoise(self.model, data["latents"][:, 0], i, data["cond"])
        with FlopCounterMode(display=False) as one_slice:
            self.one_slice()
        rollout = float(self.sampler.num_steps * forward.get_total_flops())
        slice_flops = float(one_slice.get_total_flops())
        return {
            "matmul": 2.0 * MATMUL**3,
            "rollout": rollout,
            "step": rollout + self.spec["slices"] * slice_flops,
            "slice": slice_flops,
        }

    def info(self) -> dict[str, Any]:
        if self._flops is None:
            self._flops = self.count_flops()
        return {
            "stages": list(self.stages),
            "backend": self.device.type,
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
            "dtype": self.dtype,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "trained_parameters": sum(p.numel() for p in self.trained),
            "trained_slices": self.spec["slices"],
            "flops": self._flops,
        }


def build(spec: dict[str, Any]) -> TorchSide:
    return TorchSide(spec)
