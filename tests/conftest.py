"""Test-session setup: eight virtual CPU devices so sharding tests can build meshes of 1, 2 and 8, and under
pytest-xdist a home folder per worker."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Prompt sets are stored on first use under ~/tensorflow_datasets and tfds does not lock a folder against a
# concurrent build: two workers building the same set would read each other's half-written files.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _home = tempfile.mkdtemp(prefix=f"slas-jax-{os.environ['PYTEST_XDIST_WORKER']}-")
    os.environ["HOME"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
