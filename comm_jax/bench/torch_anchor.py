"""The PyTorch anchor: the reference training step (eager PyTorch, run in its own Python
environment) side by side with the JAX step at the same batch, image size and model, one after
the other so they never share the cores."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from typing import Any, Sequence

from comm_jax.bench.train_step import bench_config
from comm_jax.mesh import make_mesh

_RESULT = re.compile(r"torch (\S+) .*step ([0-9.]+)s median, ([0-9.]+) examples/s")


def torch_step(python: str, script: str, *, batch: int, size: int, steps: int, threads: int,
               device: str = "cpu", compile_: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs the reference step script (with `env` added to the environment); its median step time
    and examples/s."""
    cmd = [python, script, "--batch", str(batch), "--size", str(size), "--steps", str(steps),
           "--threads", str(threads), "--device", device] + (["--compile"] if compile_ else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    match = _RESULT.search(out)
    if match is None:
        raise RuntimeError(f"could not parse the torch script's output: {out!r}")
    return {"torch_version": match.group(1), "step_s": float(match.group(2)),
            "examples_per_s": float(match.group(3)), "command": " ".join(cmd)}


def compare(python: str, script: str, config_for_size, *, batch: int, sizes: Sequence[int], steps: int, warmup: int,
            threads: int, peaks: dict[str, Any], device: str = "cpu", repeats: int = 1,
            torch_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """For each image size: `config_for_size(size)` (the full-size Trifeatures CoMM with AlexNet at
    that size) in JAX (float32) and the torch reference at the same batch, alternated `repeats` times (so a change in
    the machine's load hits both alike); medians of their examples/s and the ratio.

    On a shared CPU host pass `torch_env={"OMP_WAIT_POLICY": "PASSIVE"}`: with OpenMP's default
    spin-waiting, torch's step time collapses (10-30x measured) whenever another process takes a core.
    """
    mesh = make_mesh([("data", -1)])
    rows = []
    for size in sizes:
        cfg = config_for_size(size)
        cfg.batch_size = batch
        jax_runs, torch_runs = [], []
        for _ in range(repeats):
            jax_runs.append(bench_config(cfg, mesh, steps=steps, warmup=warmup, peaks=peaks))
            torch_runs.append(torch_step(python, script, batch=batch, size=size, steps=steps, threads=threads,
                                         device=device, env=torch_env))
        jax_rate = statistics.median(r["examples_per_s"] for r in jax_runs)
        torch_rate = statistics.median(r["examples_per_s"] for r in torch_runs)
        row = {"size": size, "batch_size": batch, "threads": threads, "repeats": repeats,
               "jax_examples_per_s": jax_rate, "torch_examples_per_s": torch_rate,
               "jax_over_torch": jax_rate / torch_rate,
               "jax_runs_examples_per_s": [r["examples_per_s"] for r in jax_runs],
               "torch_runs_examples_per_s": [r["examples_per_s"] for r in torch_runs],
               "jax_compile_s": jax_runs[0]["compile_s"], "torch_version": torch_runs[0]["torch_version"],
               "torch_command": torch_runs[0]["command"], "torch_env": torch_env or {}}
        rows.append(row)
        print(f"AlexNet {size} px batch {batch}: JAX {jax_rate:.1f} ex/s, torch {torch_rate:.1f} ex/s "
              f"(medians of {repeats}), JAX/torch {row['jax_over_torch']:.2f}", flush=True)
    return rows
