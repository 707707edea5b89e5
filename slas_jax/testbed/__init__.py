"""The shapes testbed: a CPU-sized text-to-image world in which the paper's claims can be measured end to end
with the library's real code paths (see README.md in this folder). The library never imports this package;
it joins through the plugin registries (``slas_jax.testbed.plugin``)."""
