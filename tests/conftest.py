"""Test-session setup: eight virtual CPU devices so sharding tests can build meshes of 1, 2 and 8."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
