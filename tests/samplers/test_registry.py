"""Specification of the sampler registry: ``config.sampler.name`` picks a builder of the model's family, which
turns the family's schedule and the run's sampler settings into the sampler."""

import numpy as np
import pytest

from slas_jax.config import SamplerConfig, load_config
from slas_jax.errors import ConfigError
from slas_jax.samplers import (
    SAMPLERS,
    DDIMSampler,
    DiffusionSchedule,
    FlowSampler,
    FlowSchedule,
    ddim_timesteps,
    register_sampler,
    scaled_linear_alphas_cumprod,
    shifted_sigmas,
)

TIMESTEPS, PREV = ddim_timesteps(4, 1000, steps_offset=1)
DIFFUSION = DiffusionSchedule(
    alphas_cumprod=scaled_linear_alphas_cumprod(),
    timesteps=TIMESTEPS,
    prev_timesteps=PREV,
    final_alpha_cumprod=0.9991,
    prediction_type="v_prediction",
)
FLOW = FlowSchedule(sigmas=shifted_sigmas(4, 3.0))
SETTINGS = SamplerConfig(num_steps=4, noise_level=0.7, sde_window=(1, 3))


def test_the_shipped_samplers_and_their_families():
    assert {name: SAMPLERS.get(name).family for name in SAMPLERS.names()} == {
        "dance_flow": "flux",
        "ddim": "unet",
        "flow_sde": "flux",
    }


def test_ddim_takes_the_schedule_and_the_run_settings():
    sampler = SAMPLERS.get("ddim").build(DIFFUSION, SETTINGS)
    assert isinstance(sampler, DDIMSampler)
    assert sampler.eta == 0.7 and sampler.sde_window == (1, 3)
    assert sampler.final_alpha_cumprod == 0.9991 and sampler.prediction_type == "v_prediction"
    np.testing.assert_array_equal(sampler.timesteps, TIMESTEPS)
    np.testing.assert_array_equal(sampler.prev_timesteps, PREV)


@pytest.mark.parametrize(("name", "form"), [("flow_sde", "flow_grpo"), ("dance_flow", "dance")])
def test_flow_samplers_take_the_sigmas_and_their_own_step_form(name, form):
    sampler = SAMPLERS.get(name).build(FLOW, SETTINGS)
    assert isinstance(sampler, FlowSampler)
    assert sampler.form == form and sampler.noise_level == 0.7 and sampler.sde_window == (1, 3)
    np.testing.assert_array_equal(sampler.sigmas, FLOW.sigmas)


def test_an_unknown_name_is_one_line_listing_the_choices():
    with pytest.raises(ConfigError, match=r"^config\.sampler\.name: unknown sampler 'euler'; choose one of "):
        load_config({"sampler": {"name": "euler"}})


def test_a_sampler_of_the_other_family_is_refused_with_the_ones_that_fit():
    with pytest.raises(ConfigError, match=r"'flow_sde' samples family 'flux'.*use one of ddim$"):
        load_config({"sampler": {"name": "flow_sde"}})


def test_a_registered_sampler_is_chosen_by_name():
    """What a plugin does: register a builder; configs of its family may then name it."""
    name = "ddim_deterministic_tail"

    @register_sampler(name, "unet")
    def build(schedule, config):
        return SAMPLERS.get("ddim").build(schedule, config)

    try:
        assert load_config({"sampler": {"name": name}}).sampler.name == name
        with pytest.raises(ValueError, match="registered twice"):
            register_sampler(name, "unet")(build)
    finally:
        del SAMPLERS._entries[name]
