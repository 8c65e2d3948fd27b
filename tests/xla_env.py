"""XLA flags of the test processes and of the subprocesses the tests start.

The tests compile many small programs and run each for a few steps, so LLVM's optimisation passes cost
more compile time than they save at run time: `--xla_backend_optimization_level=0` compiles the CPU
kernels unoptimised (measured: `tests/test_multibench.py` + `tests/test_losses.py` with `-n 2` on 2 cores,
132 s -> 92 s wall). Programs keep their semantics; only the generated machine code is slower.
"""

import os

TEST_FLAGS = ("--xla_backend_optimization_level=0",)


def xla_flags(devices: int, flags: str = "") -> str:
    """`flags` with `devices` fake CPU devices and the test flags (an existing device count is replaced,
    a test flag already set is kept as set)."""
    kept = [f for f in flags.split() if "xla_force_host_platform_device_count" not in f]
    kept += [f for f in TEST_FLAGS if f.split("=")[0] not in flags]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def env_with_devices(devices: int) -> dict[str, str]:
    """This process's environment for a subprocess with `devices` fake CPU devices and the test flags."""
    return dict(os.environ, XLA_FLAGS=xla_flags(devices, os.environ.get("XLA_FLAGS", "")))
