"""Ahead-of-time check of a launch: compile the train step for a mesh and global batch without
running it, print per-device memory and FLOPs from the compiled executable, and fail early when it
would not fit.

    python -m comm_jax.aot_check --config=configs/trifeatures.py --devices=64 \\
        --config.batch_size=4096 [--device_memory_gb=80]

With `--devices=N` the check runs on N fake CPU devices (any N, on any machine); without it, on the
devices this process sees (e.g. the GPUs of this host).
"""

from __future__ import annotations

import os
import sys


def _fake_devices_from_argv(argv: list[str]) -> int | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def _use_fake_devices(n: int) -> None:
    """Must run before JAX initialises its backend."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def check(cfg, device_memory_gb: float | None = None) -> dict:
    """Compile the step for `cfg.mesh` over the visible devices; returns the per-device figures."""
    import jax
    import time

    from comm_jax.mesh import make_mesh
    from comm_jax.train_step import batch_shardings, build_train_step

    mesh = make_mesh(cfg.mesh)
    built = build_train_step(cfg, mesh, abstract=True)
    batch = built.spec.structure(cfg.batch_size)
    batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), batch,
                         batch_shardings(mesh, batch))
    t0 = time.perf_counter()
    compiled = built.step.lower(built.state, batch).compile()
    seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes)
    report = {"devices": mesh.size, "mesh": dict(mesh.shape), "global_batch": cfg.batch_size,
              "per_device_batch": cfg.batch_size // mesh.size, "compile_seconds": seconds,
              "argument_gib": memory.argument_size_in_bytes / 2**30, "temp_gib": memory.temp_size_in_bytes / 2**30,
              "output_gib": memory.output_size_in_bytes / 2**30, "peak_gib": peak / 2**30,
              "gflop_per_device_step": float(cost.get("flops", 0.0)) / 1e9}
    report["fits"] = device_memory_gb is None or report["peak_gib"] <= device_memory_gb * 0.95
    return report


def main(argv=None) -> None:
    argv = sys.argv if argv is None else argv
    fake = _fake_devices_from_argv(argv)
    if fake:
        _use_fake_devices(fake)
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer("devices", None, "Compile for this many fake CPU devices.")
    flags.DEFINE_float("device_memory_gb", None, "Per-device memory to check against (e.g. 80 for H100).")
    flags.mark_flags_as_required(["config"])

    def run(_):
        logging.set_verbosity(logging.WARNING)
        try:
            report = check(flags.FLAGS.config, flags.FLAGS.device_memory_gb)
        except ValueError as err:
            raise SystemExit(f"error: {err}")
        for key, value in report.items():
            print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
        if not report["fits"]:
            raise SystemExit(f"error: the step needs {report['peak_gib']:.2f} GiB per device, more than 95% of "
                             f"{flags.FLAGS.device_memory_gb} GiB: lower config.batch_size, use "
                             f"config.precision=bfloat16, or shard parameters with config.param_sharding")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
