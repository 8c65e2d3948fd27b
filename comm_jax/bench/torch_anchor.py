"""The PyTorch anchor: the reference training step (eager PyTorch, run in its own Python
environment) side by side with the JAX step at the same batch, image size and model, one after
the other so they never share the cores."""

from __future__ import annotations

import re
import subprocess
from typing import Any, Sequence

from comm_jax.bench.train_step import bench_config
from comm_jax.mesh import make_mesh
from configs import trifeatures

_RESULT = re.compile(r"torch (\S+) .*step ([0-9.]+)s median, ([0-9.]+) examples/s")


def torch_step(python: str, script: str, *, batch: int, size: int, steps: int, threads: int,
               device: str = "cpu", compile_: bool = False) -> dict[str, Any]:
    """Runs the reference step script; its median step time and examples/s."""
    cmd = [python, script, "--batch", str(batch), "--size", str(size), "--steps", str(steps),
           "--threads", str(threads), "--device", device] + (["--compile"] if compile_ else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    match = _RESULT.search(out)
    if match is None:
        raise RuntimeError(f"could not parse the torch script's output: {out!r}")
    return {"torch_version": match.group(1), "step_s": float(match.group(2)),
            "examples_per_s": float(match.group(3)), "command": " ".join(cmd)}


def compare(python: str, script: str, *, batch: int, sizes: Sequence[int], steps: int, warmup: int,
            threads: int, peaks: dict[str, Any], device: str = "cpu") -> list[dict[str, Any]]:
    """For each image size: Trifeatures with AlexNet (the full-size model at `res=size`) in JAX
    (float32) and the torch reference at the same batch; the ratio of their examples/s."""
    mesh = make_mesh([("data", -1)])
    rows = []
    for size in sizes:
        cfg = trifeatures.get_config(f"res={size}")
        cfg.batch_size = batch
        jax_row = bench_config(cfg, mesh, steps=steps, warmup=warmup, peaks=peaks)
        torch_row = torch_step(python, script, batch=batch, size=size, steps=steps, threads=threads, device=device)
        row = {"size": size, "batch_size": batch, "threads": threads,
               "jax_examples_per_s": jax_row["examples_per_s"], "jax_step_s": jax_row["step_s"],
               "jax_compile_s": jax_row["compile_s"], "torch_examples_per_s": torch_row["examples_per_s"],
               "torch_step_s": torch_row["step_s"], "torch_version": torch_row["torch_version"],
               "torch_command": torch_row["command"],
               "jax_over_torch": jax_row["examples_per_s"] / torch_row["examples_per_s"]}
        rows.append(row)
        print(f"AlexNet {size} px batch {batch}: JAX {row['jax_examples_per_s']:.1f} ex/s, torch "
              f"{row['torch_examples_per_s']:.1f} ex/s, JAX/torch {row['jax_over_torch']:.2f}", flush=True)
    return rows
