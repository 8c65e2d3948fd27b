"""Test setup: 8 fake CPU devices for sharding tests, set before JAX initialises."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()


import pytest  # noqa: E402


@pytest.fixture(scope="package")
def tfds_dir(tmp_path_factory):
    """Bimodal Trifeatures 32px generated once per test run (per xdist worker) into a temporary TFDS data dir."""
    import tensorflow_datasets as tfds

    import input_pipeline  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("bimodal_trifeatures/32px", data_dir=data_dir).download_and_prepare()
    return data_dir
