"""Test setup, before JAX initialises: 8 fake CPU devices for sharding tests and the test XLA flags
(tests/xla_env.py)."""

import os
import re
import shutil
import tempfile

from tests.xla_env import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
_devices = re.search(r"xla_force_host_platform_device_count=(\d+)", _flags)
os.environ["XLA_FLAGS"] = xla_flags(int(_devices.group(1)) if _devices else 8, _flags)


# One persistent XLA compilation cache per test run, made by the controller before it starts the xdist
# workers, which inherit it like every subprocess the tests start: programs compiled once, e.g. the same
# tiny training step in a run and in its resumed run, are read back instead of compiled again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE = tempfile.mkdtemp(prefix="comm_jax_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="package")
def tfds_dir(tmp_path_factory):
    """Bimodal Trifeatures 32px generated once per test run (per xdist worker) into a temporary TFDS data dir."""
    import tensorflow_datasets as tfds

    import input_pipeline  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("bimodal_trifeatures/32px", data_dir=data_dir).download_and_prepare()
    return data_dir


def pytest_unconfigure(config):
    """The process that made the compilation cache removes it at the end of the run."""
    own = globals().get("_OWN_CACHE")
    if own and not hasattr(config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)
