"""The fused distributed CoMM loss against the reference's way of computing it.

`fused`: `comm_jax.losses.comm_loss` under `jax.shard_map` (the train step's objective): each device
scores its local rows against the gathered columns. `reference`: what the PyTorch reference does
on every GPU: gather all embeddings, then every NT-Xent term builds the full global `2N x 2N`
logits. Both are timed as value-and-gradient with respect to the embeddings (what a train step
runs), with XLA's per-device FLOPs and memory of the compiled program.

Fake CPU devices must be configured before JAX starts, so on CPU each device count runs in its
own subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N`; on accelerators the
counts run in one process on the first N devices.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from comm_jax import losses
from comm_jax.bench.timing import (check_fits, executable_report, is_out_of_memory, median_time,
                                   timed_compile)
from comm_jax.mesh import batch_axes, make_mesh


def reference_nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """The reference's `infonce` on normalised `[N, D]` embeddings: the full `2N x 2N` logits."""
    n = z1.shape[0]
    eye = jnp.eye(n, dtype=z1.dtype)
    s11 = z1 @ z1.T / temperature - 1e8 * eye
    s22 = z2 @ z2.T / temperature - 1e8 * eye
    s12 = z1 @ z2.T / temperature
    s = jnp.concatenate([jnp.concatenate([s12, s11], 1), jnp.concatenate([s22, s12.T], 1)], 0)
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(s, axis=1)))


def reference_comm_loss(view1: jax.Array, view2: jax.Array, temperature: float = 0.1) -> jax.Array:
    """CoMM's loss term by term, as the reference: views `[n + 1, N, D]` over the whole batch."""
    z1, z2 = losses.l2_normalize(view1), losses.l2_normalize(view2)
    terms = [(reference_nt_xent(z1[e], z2[-1], temperature) + reference_nt_xent(z2[e], z1[-1], temperature)) / 2
             for e in range(view1.shape[0])]
    return jnp.mean(jnp.stack(terms))


def objectives(mesh, temperature: float = 0.1) -> dict[str, Callable]:
    """name -> (view1, view2 sharded `[n+1, N, D]`) -> loss, both with the batch over the mesh."""
    spec = P(None, batch_axes(mesh), None)
    fused = jax.shard_map(lambda v1, v2: losses.comm_loss(v1, v2, temperature, axis_name=batch_axes(mesh))[0],
                          mesh=mesh, in_specs=(spec, spec), out_specs=P())

    def reference_local(v1, v2):
        axes = batch_axes(mesh)
        g1 = jax.lax.all_gather(v1, axes, axis=1, tiled=True)
        g2 = jax.lax.all_gather(v2, axes, axis=1, tiled=True)
        # Every device holds the same full loss; the mean marks it replicated (as DDP averages the
        # ranks' gradients), and the gather's transpose sums the devices' 1/d shares back.
        return jax.lax.pmean(reference_comm_loss(g1, g2, temperature), axes)

    reference = jax.shard_map(reference_local, mesh=mesh, in_specs=(spec, spec), out_specs=P())
    return {"fused": fused, "reference": reference}


def blockwise_objective(mesh, chunk: int = 4096, temperature: float = 0.1) -> Callable:
    """`objectives`' fused loss formed a column chunk at a time (`comm_jax.losses.comm_loss_blockwise`)."""
    spec = P(None, batch_axes(mesh), None)
    return jax.shard_map(lambda v1, v2: losses.comm_loss_blockwise(v1, v2, temperature, axis_name=batch_axes(mesh),
                                                                    chunk=chunk)[0],
                         mesh=mesh, in_specs=(spec, spec), out_specs=P())


def value_and_grad_step(loss: Callable, mesh) -> Callable:
    """jit of (view1, view2) -> (loss, (d loss/d view1, d loss/d view2)), inputs and grads sharded."""
    sharding = NamedSharding(mesh, P(None, batch_axes(mesh), None))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), in_shardings=(sharding, sharding),
                   out_shardings=(NamedSharding(mesh, P()), (sharding, sharding)))


def embeddings(mesh, n_emb: int, batch: int, dim: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    sharding = NamedSharding(mesh, P(None, batch_axes(mesh), None))
    make = jax.jit(lambda key: tuple(jax.random.normal(k, (n_emb, batch, dim)) for k in jax.random.split(key)),
                   out_shardings=(sharding, sharding))
    return make(jax.random.key(seed))


def bench_sizes(devices: Sequence[jax.Device], batches: Sequence[int], *, dim: int, n_emb: int,
                steps: int, max_timed_gflop: float, temperature: float = 0.1) -> list[dict[str, Any]]:
    """Rows (implementation, devices, global batch) on a data mesh over `devices`. A program is run
    and timed only when its total FLOPs (per device x devices) are under `max_timed_gflop`;
    otherwise it is compiled and analysed only."""
    mesh = make_mesh([("data", -1)], devices)
    rows = []
    for batch in batches:
        if batch % mesh.size:
            continue
        v1, v2 = embeddings(mesh, n_emb, batch, dim)
        for name, loss in objectives(mesh, temperature).items():
            row = {"impl": name, "devices": mesh.size, "global_batch": batch, "local_batch": batch // mesh.size,
                   "dim": dim, "embeddings": n_emb}
            compiled = None
            try:
                compiled, row["compile_s"] = timed_compile(value_and_grad_step(loss, mesh), v1, v2)
                row |= executable_report(compiled)
                total_gflop = (row["compiled_flops_per_device"] or 0) * mesh.size / 1e9
                if total_gflop <= max_timed_gflop:
                    check_fits(row["memory"], devices[0])
                    timing = median_time(lambda: compiled(v1, v2), steps, warmup=1)
                    row |= {"time_s": timing["median_s"], "times_s": timing["times_s"],
                            "loss": float(timing["last"][0])}
            except Exception as err:  # noqa: BLE001  (out of memory is a result; anything else is raised)
                if not is_out_of_memory(err):
                    raise
                row |= {"oom": True, "error": str(err).splitlines()[0][:300]}
            rows.append(row)
            print(format_row(row), flush=True)
            del compiled
            gc.collect()
    return rows


def run(device_counts: Sequence[int], batches: Sequence[int], *, dim: int = 256, n_emb: int = 3,
        steps: int = 3, max_timed_gflop: float = 200.0) -> list[dict[str, Any]]:
    """All device counts: fake CPU devices in one subprocess each, or real devices in-process."""
    platform = jax.default_backend()
    rows: list[dict[str, Any]] = []
    for count in device_counts:
        if platform == "cpu":
            rows += _cpu_subprocess(count, batches, dim=dim, n_emb=n_emb, steps=steps,
                                    max_timed_gflop=max_timed_gflop)
        elif count <= jax.device_count():
            rows += bench_sizes(jax.devices()[:count], batches, dim=dim, n_emb=n_emb, steps=steps,
                                max_timed_gflop=max_timed_gflop)
    return rows


def _cpu_subprocess(count: int, batches: Sequence[int], **kwargs) -> list[dict[str, Any]]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        spec = json.dumps({"count": count, "batches": list(batches), **kwargs, "output": out})
        subprocess.run([sys.executable, "-m", "comm_jax.bench.loss", spec], env=env, check=True)
        with open(out) as file:
            return json.load(file)


def check_scaling(rows: Sequence[dict[str, Any]], flop_tolerance: float = 0.10) -> dict[str, Any]:
    """The two properties of the fused loss, from the measured rows:
    - per-device FLOPs at a fixed global batch fall as 1/devices: F(1) / (d F(d)) within tolerance;
    - per-device memory follows local x global batch, not global^2: least-squares fits of the
      temporaries to a*(local*global) + b*global and to a*global^2 + b*global, max relative error.
    """
    fused = [r for r in rows if r["impl"] == "fused" and r.get("compiled_flops_per_device")]
    flop_ratios = {}
    for r in fused:
        base = next((b for b in fused if b["devices"] == 1 and b["global_batch"] == r["global_batch"]), None)
        if base is not None and r["devices"] > 1:
            flop_ratios[f"N={r['global_batch']},d={r['devices']}"] = (
                base["compiled_flops_per_device"] / (r["devices"] * r["compiled_flops_per_device"]))
    flops_ok = all(abs(v - 1) <= flop_tolerance for v in flop_ratios.values())
    out: dict[str, Any] = {"flop_ratio_1_over_d": flop_ratios, "flop_scaling_ok": flops_ok,
                           "flop_tolerance": flop_tolerance}
    for impl in ("fused", "reference"):
        mem_rows = [r for r in rows if r["impl"] == impl and r.get("memory")]
        if len(mem_rows) >= 3:
            out[f"{impl}_memory_fit"] = _memory_fits(mem_rows)
    fit = out.get("fused_memory_fit")
    if fit:
        out["memory_scaling_ok"] = fit["local_x_global"]["max_rel_err"] < fit["global_sq"]["max_rel_err"]
    return out


def _memory_fits(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    temp = np.array([r["memory"]["temp"] for r in rows], float)
    n = np.array([r["global_batch"] for r in rows], float)
    b = np.array([r["local_batch"] for r in rows], float)
    fits = {}
    for name, feature in (("local_x_global", b * n), ("global_sq", n * n)):
        design = np.stack([feature, n], 1)
        coef, *_ = np.linalg.lstsq(design, temp, rcond=None)
        rel = np.abs(design @ coef - temp) / np.maximum(temp, 1)
        fits[name] = {"bytes_per_element": float(coef[0]), "bytes_per_row": float(coef[1]),
                      "max_rel_err": float(rel.max())}
    return fits


HEADER = (f"{'impl':9s} {'dev':>3s} {'global N':>8s} {'local':>6s} {'time ms':>9s} {'GFLOP/dev':>10s} "
          f"{'temp MiB':>9s} {'total MiB':>9s} {'compile s':>9s}")


def format_row(row: dict[str, Any]) -> str:
    mem = row.get("memory") or {}
    t = f"{row['time_s'] * 1e3:9.1f}" if "time_s" in row else f"{'OOM' if row.get('oom') else '-':>9s}"
    f = row.get("compiled_flops_per_device")
    return (f"{row['impl']:9s} {row['devices']:3d} {row['global_batch']:8d} {row['local_batch']:6d} {t} "
            f"{(f or 0) / 1e9:10.2f} {mem.get('temp', 0) / 2**20:9.1f} {mem.get('total', 0) / 2**20:9.1f} "
            f"{row.get('compile_s', 0):9.1f}")


def _worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    devices = jax.devices()
    if len(devices) != spec["count"]:
        raise SystemExit(f"expected {spec['count']} devices, JAX sees {len(devices)}")
    rows = bench_sizes(devices, spec["batches"], dim=spec["dim"], n_emb=spec["n_emb"], steps=spec["steps"],
                       max_timed_gflop=spec["max_timed_gflop"])
    with open(spec["output"], "w") as file:
        json.dump(rows, file)


if __name__ == "__main__":
    _worker(sys.argv[1])
