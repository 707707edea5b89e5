"""Tiny model settings and inputs several test modules share."""

import jax.numpy as jnp
import numpy as np

from slas_jax.models import flux

PIXEL_FLUX = {
    "resolution": 8,
    "architecture": {
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "axes_dims_rope": (2, 2, 4),
    },
    "text_architecture": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
}
"""``model`` settings of the CPU testbeds' random pixel-space FLUX: one block of each kind on 2x2 pixel
patches, width 16, and one tiny CLIP text encoder."""


def flux_transformer_inputs(config: flux.FluxConfig) -> dict[str, np.ndarray]:
    """Seeded inputs of a FLUX transformer of ``config`` (2 samples of 4x4x16 latents, 5 text tokens), as numpy
    arrays that both our model and diffusers' take."""
    rng = np.random.default_rng(1)
    return dict(
        hidden_states=np.array(
            flux.pack_latents(jnp.asarray(rng.standard_normal((2, 4, 4, 16), np.float32)))
        ),
        encoder_hidden_states=rng.standard_normal((2, 5, config.joint_attention_dim), dtype=np.float32),
        pooled_projections=rng.standard_normal((2, config.pooled_projection_dim), dtype=np.float32),
        timestep=np.array([0.9, 0.35], np.float32),
        img_ids=np.array(flux.image_ids(2, 2)),
        txt_ids=np.array(flux.text_ids(5)),
        guidance=np.array([3.5, 3.5], np.float32),
    )
