"""The testbed's entry point (group ``slas_jax.plugins`` in pyproject.toml): importing it registers the
testbed's prompt sources ("shapes", "brightness"), rewards ("shapes", "proxy", "brightness") and scorer
("shapes") in the library's registries, exactly as a user's own plugin would."""

from slas_jax.testbed import brightness, ground_truth, prompts, proxy

__all__ = ["brightness", "ground_truth", "prompts", "proxy"]
