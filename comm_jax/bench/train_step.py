"""Train-step throughput: the project's jitted, donated step on device-resident synthetic batches.

Per (config, precision, global batch): examples/s, step time (median after warm-up, each step
synchronised), compile time, TFLOP/s per device from the analytic count and from XLA's cost
analysis (and their ratio), MFU against the chip's peak, and the compiled memory.
"""

from __future__ import annotations

import copy
import gc
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from comm_jax import flops, peaks as peak_table
from comm_jax.bench.timing import check_fits, executable_report, is_out_of_memory, median_time, timed_compile
from comm_jax import config_schema
from comm_jax.batch import batch_spec
from comm_jax.mesh import batch_sharding
from comm_jax.train_step import build_train_step


def synthetic_batch(cfg, batch_size: int, mesh, seed: int = 0) -> dict[str, Any]:
    """A batch of the step's contract (`comm_jax.batch`: float views of standard normals, or random
    uint8 images and keys for on-device augmentation; masks all valid), generated on the devices
    already sharded over the mesh (no host transfer)."""
    structure = batch_spec(cfg, config_schema.validate(cfg)).structure(batch_size)
    leaves, treedef = jax.tree.flatten(structure)
    shardings = treedef.unflatten([batch_sharding(mesh, len(x.shape)) for x in leaves])

    def make(key):
        keys = jax.random.split(key, len(leaves))
        made = [jax.random.bits(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.unsignedinteger)
                else jax.random.randint(k, x.shape, 1, 256, x.dtype) if jnp.issubdtype(x.dtype, jnp.integer)
                else jnp.ones(x.shape, x.dtype) if x.dtype == jnp.bool_
                else jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        return treedef.unflatten(made)

    return jax.jit(make, out_shardings=shardings)(jax.random.key(seed))


def bench_config(cfg: ml_collections.ConfigDict, mesh, *, steps: int, warmup: int,
                 peaks: dict[str, Any], compile_only: bool = False) -> dict[str, Any]:
    """One measured row for `cfg` as given (its batch_size and precision)."""
    batch_size, n_dev = cfg.batch_size, mesh.size
    batch = synthetic_batch(cfg, batch_size, mesh)
    built = build_train_step(cfg, mesh, batch)
    state = built.state
    compiled, compile_s = timed_compile(built.step, state, batch)
    analytic = flops.train_step(cfg, batch_size)
    row: dict[str, Any] = {"batch_size": batch_size, "precision": cfg.precision, "devices": n_dev,
                           "compile_s": compile_s, "analytic_flops": analytic} | executable_report(compiled)
    compiled_total = row["compiled_flops_per_device"]
    if compiled_total:
        row["analytic_over_compiled"] = analytic["train_step"] / (compiled_total * n_dev)
    if compile_only:
        return row
    check_fits(row["memory"], mesh.devices.flat[0])

    def one_step():
        nonlocal state
        state, metrics = compiled(state, batch)
        return state, metrics

    timing = median_time(one_step, steps, warmup)
    step_s = timing["median_s"]
    row |= {"step_s": step_s, "step_times_s": timing["times_s"], "examples_per_s": batch_size / step_s,
            "tflops_per_device": analytic["train_step"] / step_s / n_dev / 1e12}
    if compiled_total:
        row["compiled_tflops_per_device"] = compiled_total / step_s / 1e12
    row["mfu"] = peak_table.mfu(row["tflops_per_device"], peaks, cfg.precision)
    del state, batch, compiled
    gc.collect()
    return row


def sweep(name: str, base_cfg: ml_collections.ConfigDict, mesh, *, batch_sizes: Sequence[int] | str,
          precisions: Sequence[str], steps: int, warmup: int, peaks: dict[str, Any],
          max_auto_batch: int = 4096, compile_only_batches: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Rows for every precision x batch size. `batch_sizes="auto"` doubles from 64 until a step
    does not fit in device memory (or `max_auto_batch`); an out-of-memory row ends that sweep.
    Batches in `compile_only_batches` are compiled and analysed but not run."""
    rows = []
    for precision in precisions:
        sizes = _auto_sizes(max_auto_batch) if batch_sizes == "auto" else list(batch_sizes)
        for batch_size in sizes:
            cfg = copy.deepcopy(base_cfg)
            cfg.batch_size, cfg.precision, cfg.model.precision = batch_size, precision, precision
            if batch_size % mesh.size:
                continue
            try:
                row = bench_config(cfg, mesh, steps=steps, warmup=warmup, peaks=peaks,
                                   compile_only=batch_size in compile_only_batches)
            except Exception as err:  # noqa: BLE001  (an OOM ends the sweep, anything else is raised)
                if not is_out_of_memory(err):
                    raise
                rows.append({"config": name, "batch_size": batch_size, "precision": precision,
                             "devices": mesh.size, "oom": True, "error": str(err).splitlines()[0][:300]})
                gc.collect()
                break
            rows.append({"config": name} | row)
            print(format_row(rows[-1]), flush=True)
    return rows


def _auto_sizes(limit: int) -> list[int]:
    sizes, b = [], 64
    while b <= limit:
        sizes.append(b)
        b *= 2
    return sizes


HEADER = (f"{'config':28s} {'prec':8s} {'batch':>5s} {'dev':>3s} {'ex/s':>9s} {'step ms':>9s} "
          f"{'compile s':>9s} {'TFLOP/s/dev':>11s} {'XLA TF/s':>9s} {'ana/XLA':>7s} {'MFU %':>6s} {'mem GiB':>7s}")


def format_row(row: dict[str, Any]) -> str:
    if row.get("oom"):
        return f"{row['config']:28s} {row['precision']:8s} {row['batch_size']:5d} {row['devices']:3d}  out of memory"
    mem = row.get("memory") or {}
    fmt = lambda key, spec, scale=1.0: format(row[key] * scale, spec) if row.get(key) is not None else "-"
    return (f"{row['config']:28s} {row['precision']:8s} {row['batch_size']:5d} {row['devices']:3d} "
            f"{fmt('examples_per_s', '9.1f'):>9s} {fmt('step_s', '9.1f', 1e3):>9s} {row['compile_s']:9.1f} "
            f"{fmt('tflops_per_device', '11.4f'):>11s} {fmt('compiled_tflops_per_device', '9.4f'):>9s} "
            f"{fmt('analytic_over_compiled', '7.3f'):>7s} {fmt('mfu', '6.1f', 100):>6s} "
            f"{mem.get('total', 0) / 2**30:7.2f}")
